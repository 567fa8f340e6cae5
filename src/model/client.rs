//! [`ModelClient`]: the only code that sends model requests, and the receipt for each exchange.

use super::*;

/// Sends model requests and records one signed receipt per HTTP exchange.
pub struct ModelClient {
    http: reqwest::Client,
    provider: Box<dyn Provider>,
    url: String,
    endpoint: String,
    model: String,
    max_tokens: u32,
    api_key: Option<Secret>,
    headers: HeaderMap,
    bundle: BundleWriter,
}

impl fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelClient")
            .field("provider", &self.provider.kind())
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("bundle", &self.bundle.path())
            .finish_non_exhaustive()
    }
}

/// What came back from one HTTP exchange, before decoding.
pub(super) struct Exchange {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    /// Set when the exchange itself failed (no response, broken or oversized body).
    failure: Option<ModelError>,
}

pub(super) fn transport_error(e: reqwest::Error) -> ModelError {
    let timeout = e.is_timeout();
    // `without_url` keeps the URL (and any credentials in it) out of the message.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ModelError::Transport { message, timeout }
}

/// The HTTP client for `cfg`'s model endpoint: its timeout, and no redirects.
pub fn http_client(cfg: &ModelConfig) -> Result<reqwest::Client, ModelError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
        // A redirect could carry the key to another host or turn the POST into a GET: never follow one.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ModelError::Config(format!("cannot build HTTP client: {e}")))
}

impl ModelClient {
    /// A client for `cfg`, recording into `bundle`.
    pub fn new(cfg: &ModelConfig, bundle: BundleWriter) -> Result<ModelClient, ModelError> {
        ModelClient::with_http(cfg, bundle, http_client(cfg)?)
    }

    /// [`ModelClient::new`] over an HTTP client made by [`http_client`] for the same `cfg`: a runner shares one
    /// across its jobs (its connection pool, and the root certificates it parsed once).
    pub fn with_http(
        cfg: &ModelConfig,
        bundle: BundleWriter,
        http: reqwest::Client,
    ) -> Result<ModelClient, ModelError> {
        let provider = provider_for(cfg.provider, cfg.prompt_caching);
        let base = cfg.base_url.trim_end_matches('/');
        let url = format!("{base}{}", provider.path());
        let parsed = url::Url::parse(&url)
            .map_err(|e| ModelError::Config(format!("model.base_url is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ModelError::Config(
                "model.base_url must be http:// or https://".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Resolved at start-up by the command ([`crate::config::Config::load_for`]); unresolved is a bug, said so.
        let api_key = match &cfg.api_key {
            Some(k) => Some(
                k.value()
                    .map_err(|e| ModelError::Config(e.to_string()))?
                    .clone(),
            ),
            None => None,
        };
        for (name, value) in provider.headers(api_key.as_ref()) {
            let hname = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ModelError::Config(format!("invalid header name `{name}`")))?;
            // The error names the header only: the value may be the key.
            let mut hvalue = HeaderValue::from_str(&value).map_err(|_| {
                ModelError::Config(format!(
                    "header `{name}` has an invalid value (check the API key for stray characters)"
                ))
            })?;
            if matches!(name.as_str(), "authorization" | "x-api-key") {
                hvalue.set_sensitive(true);
            }
            headers.insert(hname, hvalue);
        }
        Ok(ModelClient {
            http,
            endpoint: parsed.path().to_string(),
            url,
            provider,
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens_per_call,
            api_key,
            headers,
            bundle,
        })
    }

    /// Sends one request: serialises it once, sends those bytes, reads the whole response, appends exactly one
    /// receipt for the exchange (also on HTTP errors and transport failures), then decodes. Never retries.
    pub async fn call(&mut self, req: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&self.provider.encode(&self.model, self.max_tokens, req))
            .map(bytes::Bytes::from)
            .map_err(|e| ModelError::Encode(e.to_string()))?;
        // The statements of the turn before (this client's last receipt, the tool calls it led to) are made durable
        // before the provider acts on their results: one sync per turn, not one per statement.
        self.bundle.sync().await?;
        let started_at = Utc::now();
        let t0 = Instant::now();
        // `Bytes`: the request body and the receipt share one buffer.
        let exchange = self.exchange(body.clone()).await;
        let latency_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);

        let result = match exchange.failure {
            Some(e) => Err(e),
            // Some servers and proxies stream by default; drafter asks for one JSON document (`"stream": false`).
            None if (200..300).contains(&exchange.status)
                && looks_like_event_stream(exchange.content_type.as_deref(), &exchange.body) =>
            {
                Err(bad(
                    format!(
                        "the endpoint answered with a server-sent event stream (content-type {}) although the request \
                         asked for none (\"stream\": false); turn streaming off on the server or proxy",
                        exchange.content_type.as_deref().unwrap_or("text/event-stream")
                    ),
                    &exchange.body,
                ))
            }
            None if (200..300).contains(&exchange.status) => self.provider.decode(&exchange.body),
            None => Err(ModelError::Status {
                status: exchange.status,
                retry_after: exchange.retry_after,
                message: error_message(&exchange.body).unwrap_or_else(|| excerpt(&exchange.body)),
            }),
        };
        // Redact before anything (logs included) sees the error text.
        let mut result = result.map_err(|e| e.redacted(self.api_key.as_ref()));
        if let Ok(r) = &mut result {
            if r.usage.estimated {
                // No usage reported: estimate from the bytes, so token budgets still count the call.
                r.usage.input_tokens = (body.len() as u64).div_ceil(4);
                r.usage.output_tokens = (exchange.body.len() as u64).div_ceil(4);
                tracing::warn!(
                    input_tokens = r.usage.input_tokens,
                    output_tokens = r.usage.output_tokens,
                    "the model endpoint reported no usage; tokens estimated from the bytes exchanged"
                );
            }
        }
        let usage = result.as_ref().map(|r| r.usage).unwrap_or_default();
        let receipt = self.bundle.model_call(ModelCallInput {
            provider: self.provider.kind().as_str(),
            model: &self.model,
            endpoint: &self.endpoint,
            http_status: exchange.status,
            request: &body,
            response: &exchange.body,
            usage: ReceiptUsage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_tokens: usage.cache_read_tokens,
                cache_write_tokens: usage.cache_write_tokens,
            },
            usage_estimated: usage.estimated,
            latency_ms,
            started_at,
        })?;
        match &result {
            Ok(r) => tracing::info!(
                seq = receipt.chain.seq,
                status = exchange.status,
                latency_ms,
                input_tokens = r.usage.input_tokens,
                output_tokens = r.usage.output_tokens,
                cache_read_tokens = r.usage.cache_read_tokens,
                cache_write_tokens = r.usage.cache_write_tokens,
                "model call"
            ),
            Err(e) => {
                tracing::warn!(seq = receipt.chain.seq, status = exchange.status, latency_ms, error = %e, "model call failed")
            }
        }
        result
    }

    async fn exchange(&self, body: bytes::Bytes) -> Exchange {
        let sent = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Exchange {
                    status: 0,
                    body: Vec::new(),
                    retry_after: None,
                    content_type: None,
                    failure: Some(transport_error(e)),
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(100).collect::<String>());
        let mut body = Vec::new();
        let mut failure = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        failure = Some(ModelError::TooLarge {
                            limit: MAX_RESPONSE_BYTES,
                        });
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(transport_error(e));
                    break;
                }
            }
        }
        Exchange {
            status,
            body,
            retry_after,
            content_type,
            failure,
        }
    }

    /// The proof bundle this client records into.
    pub fn bundle(&self) -> &BundleWriter {
        &self.bundle
    }

    /// The bundle, for the agent loop's tool-call statements (one chain orders model and tool calls).
    pub fn bundle_mut(&mut self) -> &mut BundleWriter {
        &mut self.bundle
    }

    /// Ends the client, returning the bundle writer.
    pub fn into_bundle(self) -> BundleWriter {
        self.bundle
    }

    /// The API family in use.
    pub fn provider_kind(&self) -> ProviderKind {
        self.provider.kind()
    }

    /// The model name sent.
    pub fn model(&self) -> &str {
        &self.model
    }
}
