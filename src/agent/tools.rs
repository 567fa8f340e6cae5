//! The tools the model may call, their specs, the policy's permission check before each call, and their
//! execution through the sandbox's executor.

use super::*;

/// The tools offered to the model, with JSON Schemas for their inputs.
pub fn tool_specs() -> Vec<ToolSpec> {
    let spec = |tool: Tool, description: &str, schema: Value| ToolSpec {
        name: tool.as_str().to_string(),
        description: description.to_string(),
        input_schema: schema,
    };
    let path_prop =
        json!({"type": "string", "description": "Path relative to the repository root"});
    vec![
        spec(
            Tool::ListFiles,
            "List files under a directory of the repository (recursively, up to `max_depth` levels, .git excluded).",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Directory relative to the repository root; default `.`"},
                "max_depth": {"type": "integer", "minimum": 1, "maximum": 10}
            }}),
        ),
        spec(
            Tool::ReadFile,
            "Read a text file of the repository.",
            json!({"type": "object", "properties": {"path": path_prop}, "required": ["path"]}),
        ),
        spec(
            Tool::WriteFile,
            "Create or overwrite a file with the given content.",
            json!({"type": "object", "properties": {"path": path_prop, "content": {"type": "string"}},
                   "required": ["path", "content"]}),
        ),
        spec(
            Tool::EditFile,
            "Replace one exact occurrence of `old` with `new` in a file. `old` must occur exactly once.",
            json!({"type": "object", "properties": {"path": path_prop, "old": {"type": "string"},
                   "new": {"type": "string"}}, "required": ["path", "old", "new"]}),
        ),
        spec(
            Tool::Search,
            "Search file contents with a regular expression (extended syntax, like grep -E), returning matching lines as path:line:text. Skips .git and binary files.",
            json!({"type": "object", "properties": {"pattern": {"type": "string"},
                   "path": {"type": "string", "description": "Directory or file to search; default `.`"}},
                   "required": ["pattern"]}),
        ),
        spec(
            Tool::Run,
            "Run a shell command (bash) in the repository root inside the sandbox. No network. Returns the exit code and output.",
            json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
        ),
        spec(
            Tool::Finish,
            "End the task with a summary of what was changed and how it was checked. The runner then checks the \
             change against the repository's write rules: if it breaks one, the result says which rule and files, \
             and you can fix the workspace and call `finish` again. Build products your commands created \
             (__pycache__, node_modules, target/, ...) are left out of the commit.",
            json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}),
        ),
    ]
}

/// One line for progress output and the PR body.
pub(super) fn describe_call(name: &str, input: &Value) -> String {
    let s = |k: &str| {
        input
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let d = match name.parse::<Tool>() {
        Ok(Tool::ListFiles) => {
            let p = s("path");
            if p.is_empty() {
                ".".into()
            } else {
                p
            }
        }
        Ok(Tool::ReadFile | Tool::WriteFile | Tool::EditFile) => s("path"),
        Ok(Tool::Search) => format!(
            "{} in {}",
            s("pattern"),
            if s("path").is_empty() {
                ".".into()
            } else {
                s("path")
            }
        ),
        Ok(Tool::Run) => s("command"),
        Ok(Tool::Finish) | Err(_) => String::new(),
    };
    cap_chars(&d.replace('\n', " "), 200)
}

/// Runs one tool. `ok` is false for a command that failed, which the model still sees normally.
pub(super) async fn execute(
    name: &str,
    input: &Value,
    workspace: Workspace<'_>,
    command_timeout: Duration,
) -> Result<Executed, ToolFailure> {
    if let Value::String(raw) = input {
        // The provider handed over arguments that do not parse (see `model::parse_tool_arguments`).
        let why = match serde_json::from_str::<Value>(raw) {
            Err(e) => format!("are not valid JSON ({e})"),
            Ok(_) => "are JSON but not an object".to_string(),
        };
        return Err(ToolFailure::Respond(format!(
            "the arguments for `{name}` {why}; send a JSON object matching the tool's schema"
        )));
    }
    if !input.is_object() {
        return Err(ToolFailure::Respond(format!(
            "the arguments for `{name}` must be a JSON object matching the tool's schema"
        )));
    }
    match name.parse::<Tool>() {
        Ok(Tool::ListFiles) => {
            let path = opt_path(input, "path")?;
            let depth = input
                .get("max_depth")
                .and_then(Value::as_u64)
                .unwrap_or(3)
                .clamp(1, 10) as u32;
            let text = workspace.list(&path, depth).await.map_err(tool_failure)?;
            if text.trim().is_empty() {
                return Err(ToolFailure::Respond(format!("`{path}` is empty")));
            }
            Ok(Executed::new((text, true)))
        }
        Ok(Tool::ReadFile) => {
            let path = req_path(input, "path")?;
            let bytes = workspace
                .read_file(&path, MAX_READ_BYTES)
                .await
                .map_err(tool_failure)?;
            if bytes.contains(&0) {
                return Err(ToolFailure::Respond(format!("`{path}` is a binary file")));
            }
            Ok(Executed::new((
                String::from_utf8_lossy(&bytes).into_owned(),
                true,
            )))
        }
        Ok(Tool::WriteFile) => {
            let path = req_path(input, "path")?;
            let content = req_str(input, "content")?;
            if content.len() > MAX_WRITE_BYTES {
                return Err(ToolFailure::Respond(format!(
                    "content is {} bytes; the limit is {MAX_WRITE_BYTES}",
                    content.len()
                )));
            }
            workspace
                .write_file(&path, content.as_bytes())
                .await
                .map_err(tool_failure)?;
            workspace.check_disk().await.map_err(ToolFailure::Fatal)?;
            Ok(Executed::new((
                format!("wrote {} bytes to {path}", content.len()),
                true,
            )))
        }
        Ok(Tool::EditFile) => {
            let path = req_path(input, "path")?;
            let old = req_str(input, "old")?;
            let new = req_str(input, "new")?;
            if old.is_empty() {
                return Err(ToolFailure::Respond("`old` must not be empty".into()));
            }
            let bytes = workspace
                .read_file(&path, MAX_READ_BYTES)
                .await
                .map_err(tool_failure)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ToolFailure::Respond(format!("`{path}` is not UTF-8 text; use write_file"))
            })?;
            let updated = replace_once(&text, old, new).map_err(ToolFailure::Respond)?;
            if updated.len() > MAX_WRITE_BYTES {
                return Err(ToolFailure::Respond(
                    "the edited file would be too large".into(),
                ));
            }
            workspace
                .write_file(&path, updated.as_bytes())
                .await
                .map_err(tool_failure)?;
            Ok(Executed::new((format!("edited {path}"), true)))
        }
        Ok(Tool::Search) => {
            let pattern = req_str(input, "pattern")?;
            if pattern.is_empty() {
                return Err(ToolFailure::Respond("`pattern` must not be empty".into()));
            }
            let path = opt_path(input, "path")?;
            let text = workspace
                .search(pattern, &path)
                .await
                .map_err(tool_failure)?;
            if text.trim().is_empty() {
                return Ok(Executed::new(("no matches".into(), true)));
            }
            Ok(Executed::new((text, true)))
        }
        Ok(Tool::Run) => {
            let command = req_str(input, "command")?;
            if command.trim().is_empty() {
                return Err(ToolFailure::Respond("`command` must not be empty".into()));
            }
            let out = workspace
                .exec(command, command_timeout)
                .await
                .map_err(tool_failure)?;
            let mut text = if let Some(limit) = out.stopped_by {
                stopped_text(limit, command_timeout, out.exit_code)
            } else {
                format!(
                    "exit code {}\n",
                    out.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "unknown".into())
                )
            };
            text.push_str(&out.output);
            if out.truncated {
                text.push_str("\n[output was truncated]");
            }
            // A command may fill the disk even when it fails: measured after every run, the job stops over the limit.
            workspace.check_disk().await.map_err(ToolFailure::Fatal)?;
            Ok(Executed {
                text,
                ok: out.stopped_by.is_none() && out.exit_code == Some(0),
                exit_code: out.exit_code,
            })
        }
        // `finish` never gets here: the loop answers it itself.
        Ok(Tool::Finish) | Err(_) => Err(ToolFailure::Respond(format!(
            "unknown tool `{name}`; the tools are {}",
            Tool::ALL.map(Tool::as_str).join(", ")
        ))),
    }
}

/// The first line of a `run` result for a command a limit stopped: which limit, so the model can change course.
pub(super) fn stopped_text(limit: Limit, timeout: Duration, exit: Option<i64>) -> String {
    match limit {
        Limit::Timeout => format!(
            "timed out after {} s (the command and everything it started were killed)\n",
            timeout.as_secs()
        ),
        Limit::Output => "killed: the command printed more output than the sandbox allows (redirect it to a file \
             and read parts of it)\n"
            .to_string(),
        Limit::Memory => format!(
            "killed: out of memory (the sandbox's memory limit; exit {})\n",
            exit.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into())
        ),
        Limit::Disk => "killed: the workspace grew past its disk limit\n".to_string(),
    }
}

/// Sandbox errors the model caused (a bad path, a missing file) go back to it; the rest end the job.
pub(super) fn tool_failure(e: SandboxError) -> ToolFailure {
    if e.is_model_fixable() {
        ToolFailure::Respond(e.to_string())
    } else {
        ToolFailure::Fatal(e)
    }
}

pub(super) fn req_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, ToolFailure> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolFailure::Respond(format!("missing string argument `{key}`")))
}

pub(super) fn req_path(input: &Value, key: &str) -> Result<String, ToolFailure> {
    check_path(req_str(input, key)?)
}

pub(super) fn opt_path(input: &Value, key: &str) -> Result<String, ToolFailure> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(".".into()),
        Some(Value::String(s)) if s.is_empty() => Ok(".".into()),
        Some(Value::String(s)) => check_path(s),
        Some(_) => Err(ToolFailure::Respond(format!("`{key}` must be a string"))),
    }
}

/// A workspace-relative path: no absolute paths, no `..`, nothing inside `.git`.
pub fn check_path(p: &str) -> Result<String, ToolFailure> {
    let trimmed = p.trim().trim_start_matches("./");
    let trimmed = trimmed.strip_prefix("/workspace/").unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(".".into());
    }
    if trimmed.starts_with('/') || trimmed.contains('\0') || trimmed.contains('\\') {
        return Err(ToolFailure::Respond(format!(
            "`{p}` is not a path relative to the repository root"
        )));
    }
    for part in trimmed.split('/') {
        if part == ".." {
            return Err(ToolFailure::Respond(format!("`{p}` leaves the repository")));
        }
        // Case-insensitive: `.GIT` is the same directory on case-insensitive filesystems a checkout may land on.
        if part
            .trim_end_matches(['.', ' '])
            .eq_ignore_ascii_case(".git")
        {
            return Err(ToolFailure::Respond(format!(
                "`{p}` is inside .git, which is off limits"
            )));
        }
    }
    Ok(trimmed.trim_end_matches('/').to_string())
}

/// Replaces the single occurrence of `old`; zero or several occurrences are the model's error to fix.
pub fn replace_once(text: &str, old: &str, new: &str) -> Result<String, String> {
    match text.matches(old).count() {
        0 => Err("`old` was not found in the file; read the file and copy the text exactly".into()),
        1 => Ok(text.replacen(old, new, 1)),
        n => Err(format!(
            "`old` occurs {n} times; include more surrounding text so it is unique"
        )),
    }
}

pub(super) fn cap_chars(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[... {} more bytes cut ...]", &s[..cut], s.len() - cut)
}

/// The policy's word on one tool call, before anything runs: a tool the team does not have, or a write to a
/// forbidden path, is refused to the model (and logged as a policy decision); the job goes on.
pub(super) fn permit(
    p: &Permissions<'_>,
    ticket: &str,
    name: &str,
    input: &Value,
) -> Result<(), ToolFailure> {
    let tool = name.parse::<Tool>().ok();
    if tool.is_some_and(|t| !p.tools.contains(&t)) {
        let detail = format!("the `{name}` tool is not allowed for this ticket's team");
        crate::policy::log_decision(p.policy_hash, ticket, "tools", false, detail.clone());
        return Err(ToolFailure::Refused(
            "tools".into(),
            format!("refused by policy (rule `tools`): {detail}"),
        ));
    }
    if tool.is_some_and(Tool::writes) {
        if let Some(path) = input.get("path").and_then(Value::as_str) {
            if let Err(v) = write::check_path(p.write, path) {
                crate::policy::log_decision(
                    p.policy_hash,
                    ticket,
                    &v.rule,
                    false,
                    v.detail.clone(),
                );
                return Err(ToolFailure::Refused(
                    v.rule.clone(),
                    format!("refused by policy (rule `{}`): {}", v.rule, v.detail),
                ));
            }
        }
    }
    Ok(())
}
