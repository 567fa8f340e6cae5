//! The policy's budgets, enforced at every model call ([`crate::agent::CallGate`]).
//!
//! Per-job caps are counted here; per-team daily and monthly caps are counted in a [`Ledger`] shared by every worker
//! of the queue (the queue database), so two hosts cannot each spend a team's whole day. The check happens before
//! each call with what was spent so far: a job stops at its next call once a cap is reached (a single call can
//! overshoot by at most its own size; `max_tokens_per_call` bounds that).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use tracing::Instrument;

use crate::agent::{CallGate, GateRefusal};
use crate::model::TokenUsage;
use crate::policy::{self, Budget, Price};
use crate::queue::{LedgerEntry, QueueError};

/// Spending, summed (tokens, millionths of a dollar, calls).
pub use crate::queue::UsageTotal as Spent;

/// Where team spending is counted across workers.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Adds one call's usage.
    async fn record(&self, entry: &LedgerEntry) -> Result<(), QueueError>;
    /// What `team` spent since `since`.
    async fn team_since(&self, team: &str, since: DateTime<Utc>) -> Result<Spent, QueueError>;
}

/// The queue database as the ledger: every worker sharing the queue shares the counts.
pub struct QueueLedger(pub Arc<dyn crate::queue::UsageLedger>);

#[async_trait::async_trait]
impl Ledger for QueueLedger {
    async fn record(&self, e: &LedgerEntry) -> Result<(), QueueError> {
        self.0.record_usage(e).await
    }

    async fn team_since(&self, team: &str, since: DateTime<Utc>) -> Result<Spent, QueueError> {
        self.0.usage_since(team, since).await
    }
}

/// The start of the UTC day and month containing `now`.
pub fn windows(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = Utc
        .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .unwrap_or(now);
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    (day, month)
}

fn usd(micros: u64) -> String {
    format!("${:.2}", micros as f64 / 1_000_000.0)
}

fn cap_micros(usd: f64) -> u64 {
    (usd * 1_000_000.0).round().max(0.0) as u64
}

/// One job's budget gate.
pub struct Meter {
    policy_hash: String,
    ticket: String,
    job_id: String,
    team: String,
    model: String,
    price: Option<Price>,
    budget: Budget,
    ledger: Option<Arc<dyn Ledger>>,
    job: Mutex<Spent>,
    /// The last call's ledger row, being written while the job goes on (see [`Meter::settle`]).
    pending: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Meter {
    /// A gate for one job. `price` is the policy's price for the runner's model, if it has one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy_hash: &str,
        ticket: &str,
        job_id: &str,
        team: &str,
        model: &str,
        price: Option<Price>,
        budget: Budget,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Meter {
        Meter {
            policy_hash: policy_hash.into(),
            ticket: ticket.into(),
            job_id: job_id.into(),
            team: team.into(),
            model: model.into(),
            price,
            budget,
            ledger,
            job: Mutex::new(Spent::default()),
            pending: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until every call's usage is in the ledger. The rows are written beside the job's next steps (its tool
    /// calls), off the path between a model answer and the next request; a team check waits for them, and the
    /// agent stage ends with this, so a job's usage is all in the ledger before it delivers.
    pub async fn settle(&self) {
        if let Some(task) = self.pending.lock().await.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "recording model usage in the ledger failed");
            }
        }
    }

    fn job_spent(&self) -> Spent {
        *self.job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A refusal naming the rule if a cap is reached; every verdict is logged as a policy decision. The team's
    /// usage is read from the ledger only when a team cap needs it, once per window.
    pub async fn check(&self) -> Result<(), GateRefusal> {
        let deny = |rule: &str, detail: String| {
            policy::log_decision(&self.policy_hash, &self.ticket, rule, false, detail.clone());
            Err(GateRefusal {
                rule: rule.to_string(),
                message: format!("budget exhausted (policy rule `{rule}`): {detail}"),
            })
        };
        let job = self.job_spent();
        let (day, month) = windows(Utc::now());
        let (mut today, mut this_month) = (None, None);
        for cap in caps(&self.budget) {
            let spent = match cap.window {
                Window::Job => job,
                team_window => {
                    // This job's last call counts too: its row may still be on its way.
                    self.settle().await;
                    let Some(ledger) = &self.ledger else {
                        return deny(
                            "budget",
                            "team budgets are set but this runner has no usage ledger (queue) to count them"
                                .into(),
                        );
                    };
                    let (slot, since) = match team_window {
                        Window::Day => (&mut today, day),
                        _ => (&mut this_month, month),
                    };
                    if slot.is_none() {
                        match ledger.team_since(&self.team, since).await {
                            Ok(s) => *slot = Some(s),
                            Err(e) => {
                                return deny(
                                    "budget",
                                    format!("could not read the team's usage: {e}"),
                                )
                            }
                        }
                    }
                    slot.unwrap_or_default()
                }
            };
            let used = cap.measure.of(&spent);
            if used >= cap.limit {
                let who = match cap.window {
                    Window::Job => "this job".to_string(),
                    _ => format!("team {}", self.team),
                };
                return deny(cap.rule, cap.describe(&who, used));
            }
        }
        Ok(())
    }
}

/// Which spending a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// This job.
    Job,
    /// The team, this UTC day.
    Day,
    /// The team, this UTC calendar month.
    Month,
}

/// What a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Input + output tokens.
    Tokens,
    /// Millionths of a dollar.
    Cost,
}

impl Measure {
    /// The amount of `s` this measure counts.
    pub fn of(self, s: &Spent) -> u64 {
        match self {
            Measure::Tokens => s.tokens,
            Measure::Cost => s.cost_micros,
        }
    }

    /// An amount for people: a token count, or dollars.
    pub fn show(self, v: u64) -> String {
        match self {
            Measure::Tokens => v.to_string(),
            Measure::Cost => usd(v),
        }
    }
}

/// One cap a budget sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The policy rule, e.g. `budget.daily_tokens`.
    pub rule: &'static str,
    /// Whose spending it counts.
    pub window: Window,
    /// Tokens or dollars.
    pub measure: Measure,
    /// The cap, in the measure's unit.
    pub limit: u64,
}

impl Cap {
    /// The rule's key without the `budget.` prefix (`daily_tokens`).
    pub fn name(&self) -> &'static str {
        self.rule.trim_start_matches("budget.")
    }

    /// "`who` used N of its CAP tokens today (UTC)" and the like.
    fn describe(&self, who: &str, used: u64) -> String {
        let when = match self.window {
            Window::Job => "",
            Window::Day => " today (UTC)",
            Window::Month => " this month",
        };
        match self.measure {
            Measure::Tokens => format!("{who} used {used} of its {} tokens{when}", self.limit),
            Measure::Cost => format!("{who} spent {} of its {}{when}", usd(used), usd(self.limit)),
        }
    }
}

/// The caps `budget` sets, job caps first, then the day's, then the month's: the order they are checked in.
pub fn caps(budget: &Budget) -> Vec<Cap> {
    let cap = |rule, window, measure, limit: Option<u64>| {
        limit.map(|limit| Cap {
            rule,
            window,
            measure,
            limit,
        })
    };
    [
        cap(
            "budget.job_tokens",
            Window::Job,
            Measure::Tokens,
            budget.job_tokens,
        ),
        cap(
            "budget.job_cost_usd",
            Window::Job,
            Measure::Cost,
            budget.job_cost_usd.map(cap_micros),
        ),
        cap(
            "budget.daily_tokens",
            Window::Day,
            Measure::Tokens,
            budget.daily_tokens,
        ),
        cap(
            "budget.daily_cost_usd",
            Window::Day,
            Measure::Cost,
            budget.daily_cost_usd.map(cap_micros),
        ),
        cap(
            "budget.monthly_tokens",
            Window::Month,
            Measure::Tokens,
            budget.monthly_tokens,
        ),
        cap(
            "budget.monthly_cost_usd",
            Window::Month,
            Measure::Cost,
            budget.monthly_cost_usd.map(cap_micros),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[async_trait::async_trait]
impl CallGate for Meter {
    async fn before_call(&self) -> Result<(), GateRefusal> {
        self.check().await
    }

    async fn after_call(&self, usage: &TokenUsage) {
        // Cache reads and writes are priced at the cache prices; token caps count every prompt token.
        let cost = self
            .price
            .map(|p| {
                p.cost_micros_of(&crate::proof::bundle::ReceiptUsage {
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cache_read_tokens: usage.cache_read_tokens,
                    cache_write_tokens: usage.cache_write_tokens,
                })
            })
            .unwrap_or(0);
        {
            let mut job = self.job.lock().unwrap_or_else(|p| p.into_inner());
            job.tokens += usage.total();
            job.cost_micros += cost;
            job.calls += 1;
        }
        if let Some(ledger) = &self.ledger {
            let entry = LedgerEntry {
                job_id: self.job_id.clone(),
                team: self.team.clone(),
                model: self.model.clone(),
                input_tokens: usage.prompt_tokens(),
                output_tokens: usage.output_tokens,
                cost_micros: cost,
                at: Utc::now(),
            };
            // One row at a time, in order; the write (a committed, synced transaction) goes on beside the job.
            self.settle().await;
            let ledger = ledger.clone();
            let record = tokio::spawn(
                async move {
                    if let Err(e) = ledger.record(&entry).await {
                        // The next check reads the ledger again; a lost row undercounts one call, it does not stop
                        // the job.
                        tracing::warn!(error = %e, "could not record model usage in the ledger");
                    }
                }
                .in_current_span(),
            );
            *self.pending.lock().await = Some(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct MemLedger(Mutex<Vec<LedgerEntry>>);

    #[async_trait::async_trait]
    impl Ledger for MemLedger {
        async fn record(&self, e: &LedgerEntry) -> Result<(), QueueError> {
            self.0.lock().unwrap().push(e.clone());
            Ok(())
        }
        async fn team_since(&self, team: &str, since: DateTime<Utc>) -> Result<Spent, QueueError> {
            let rows = self.0.lock().unwrap();
            Ok(rows
                .iter()
                .filter(|r| r.team == team && r.at >= since)
                .fold(Spent::default(), |s, r| Spent {
                    tokens: s.tokens + r.input_tokens + r.output_tokens,
                    cost_micros: s.cost_micros + r.cost_micros,
                    calls: s.calls + 1,
                }))
        }
    }

    const PRICE: Price = Price::new(3.0, 15.0);

    fn usage(i: u64, o: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: i,
            output_tokens: o,
            ..TokenUsage::default()
        }
    }

    #[tokio::test]
    async fn job_caps_stop_the_next_call() {
        let budget = Budget {
            job_tokens: Some(1000),
            ..Budget::default()
        };
        let m = Meter::new("h", "PAY-1", "j1", "pay", "m", Some(PRICE), budget, None);
        m.before_call().await.unwrap();
        m.after_call(&usage(600, 300)).await;
        m.before_call().await.unwrap();
        m.after_call(&usage(100, 50)).await;
        let e = m.before_call().await.unwrap_err();
        assert!(
            e.message.contains("budget.job_tokens") && e.message.contains("1050 of its 1000"),
            "{e}"
        );

        let budget = Budget {
            job_cost_usd: Some(0.01),
            ..Budget::default()
        };
        let m = Meter::new("h", "PAY-1", "j1", "pay", "m", Some(PRICE), budget, None);
        m.after_call(&usage(1000, 400)).await; // $0.003 + $0.006
        m.before_call().await.unwrap();
        m.after_call(&usage(1000, 0)).await; // + $0.003
        let e = m.before_call().await.unwrap_err();
        assert!(
            e.message.contains("budget.job_cost_usd") && e.message.contains("$0.01 of its $0.01"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn team_caps_are_shared_through_the_ledger() {
        let ledger: Arc<MemLedger> = Arc::new(MemLedger::default());
        let budget = Budget {
            daily_tokens: Some(500),
            ..Budget::default()
        };
        let a = Meter::new(
            "h",
            "PAY-1",
            "j1",
            "pay",
            "m",
            None,
            budget.clone(),
            Some(ledger.clone()),
        );
        let b = Meter::new(
            "h",
            "PAY-2",
            "j2",
            "pay",
            "m",
            None,
            budget.clone(),
            Some(ledger.clone()),
        );
        let other = Meter::new(
            "h",
            "WEB-1",
            "j3",
            "web",
            "m",
            None,
            budget.clone(),
            Some(ledger.clone()),
        );
        a.after_call(&usage(300, 0)).await;
        // Another job's rows count once they are written; the agent stage of each job ends settled.
        a.settle().await;
        b.before_call().await.unwrap();
        b.after_call(&usage(250, 0)).await;
        b.settle().await;
        // Job a is under any per-job cap, but the team's day is spent by the two jobs together.
        let e = a.before_call().await.unwrap_err();
        assert!(
            e.message.contains("budget.daily_tokens") && e.message.contains("550 of its 500"),
            "{e}"
        );
        other.before_call().await.unwrap();
        // Yesterday's usage does not count today.
        ledger
            .0
            .lock()
            .unwrap()
            .iter_mut()
            .for_each(|r| r.at -= chrono::Duration::days(1));
        a.before_call().await.unwrap();
        // Without a ledger, team caps cannot be counted: refuse rather than run unmetered.
        let blind = Meter::new("h", "PAY-1", "j1", "pay", "m", None, budget, None);
        assert!(blind
            .before_call()
            .await
            .unwrap_err()
            .message
            .contains("no usage ledger"));
    }

    /// A ledger whose writes wait until the test lets them through.
    struct HeldLedger {
        rows: MemLedger,
        open: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl Ledger for HeldLedger {
        async fn record(&self, e: &LedgerEntry) -> Result<(), QueueError> {
            let _permit = self.open.acquire().await;
            self.rows.record(e).await
        }
        async fn team_since(&self, team: &str, since: DateTime<Utc>) -> Result<Spent, QueueError> {
            self.rows.team_since(team, since).await
        }
    }

    /// The ledger row is written beside the job, not between the model's answer and the next request; a team check
    /// and `settle` wait for it, so the job's own usage always counts.
    #[tokio::test]
    async fn the_ledger_row_is_written_off_the_path_and_counted_before_the_next_team_check() {
        let ledger = Arc::new(HeldLedger {
            rows: MemLedger::default(),
            open: tokio::sync::Semaphore::new(0),
        });
        let budget = Budget {
            daily_tokens: Some(500),
            ..Budget::default()
        };
        let m = Meter::new(
            "h",
            "PAY-1",
            "j1",
            "pay",
            "m",
            None,
            budget,
            Some(ledger.clone()),
        );
        // Returns while the write is held.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            m.after_call(&usage(600, 0)),
        )
        .await
        .expect("after_call waits for the ledger");
        assert!(ledger.rows.0.lock().unwrap().is_empty());
        // The check waits for the row, then counts it.
        let check = tokio::spawn(async move {
            let verdict = m.before_call().await;
            (m, verdict)
        });
        tokio::task::yield_now().await;
        assert!(!check.is_finished());
        ledger.open.add_permits(1);
        let (m, verdict) = check.await.unwrap();
        let e = verdict.unwrap_err();
        assert!(e.message.contains("600 of its 500"), "{e}");
        m.settle().await;
        assert_eq!(ledger.rows.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn windows_start_at_utc_midnight_and_the_first() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 15, 4, 5).unwrap();
        let (d, m) = windows(now);
        assert_eq!(d, Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap());
        assert_eq!(m, Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
    }
}
