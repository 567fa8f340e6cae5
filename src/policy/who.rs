//! Who set a job off ([`Who`]), and the [`Directory`] the policy asks who people are and which groups they are in.

/// Who set a job off: one type for the job that carries it (`Who`, owning its names) and the policy that is asked
/// about it (`Who<&str>`, see [`Who::as_deref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<S = String> {
    /// An operator on the runner's host (`drafter run`): trusted like the config itself, recorded by name.
    Operator(S),
    /// A Jira user (account id or Data Center name); `None` when drafter could not establish who it was.
    Jira(Option<S>),
}

impl<S: AsRef<str>> Who<S> {
    /// The same, borrowed, as the policy is asked.
    pub fn as_deref(&self) -> Who<&str> {
        match self {
            Who::Operator(n) => Who::Operator(n.as_ref()),
            Who::Jira(a) => Who::Jira(a.as_ref().map(AsRef::as_ref)),
        }
    }

    /// For `job.json`, the run statement and logs.
    pub fn describe(&self) -> String {
        match self.as_deref() {
            Who::Operator(n) => format!("operator {n}"),
            Who::Jira(Some(a)) => format!("jira user {a}"),
            Who::Jira(None) => "jira (unknown user)".into(),
        }
    }
}

/// Why the directory (Jira) could not say who someone is or which groups they are in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DirectoryError {
    /// What went wrong, for the decision log.
    pub message: String,
    /// Whether asking again later could succeed (Jira busy or unreachable, not a refusal).
    pub retryable: bool,
}

impl DirectoryError {
    /// Whether asking again later could succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl From<&str> for DirectoryError {
    fn from(message: &str) -> DirectoryError {
        DirectoryError {
            message: message.to_string(),
            retryable: false,
        }
    }
}

/// Resolves Jira identities and group membership for trigger and approver rules.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// The names of the groups `account` belongs to.
    async fn groups(&self, account: &str) -> Result<Vec<String>, DirectoryError>;

    /// Every identifier `account` goes by, itself included. On Jira Data Center a person has a user name and a user
    /// key (`JIRAUSER10100`), and a policy may list either; Cloud has only the account id. Default: `account`.
    async fn identities(&self, account: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(vec![account.to_string()])
    }

    /// Whether two identifiers are the same without asking anyone: exact by default; Data Center user names and
    /// keys regardless of letter case.
    fn same_identity(&self, listed: &str, account: &str) -> bool {
        listed == account
    }
}

/// A directory that knows no groups (for policies that name none, and for tests).
pub struct NoGroups;

#[async_trait::async_trait]
impl Directory for NoGroups {
    async fn groups(&self, _account: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(Vec::new())
    }
}
