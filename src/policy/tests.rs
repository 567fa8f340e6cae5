use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::jira::Ticket;

const EXAMPLE: &str = include_str!("../../examples/policy.toml");
const ALICE: &str = "712020:aaaaaaaa-1111-2222-3333-444444444444";
const BOB: &str = "712020:bbbbbbbb-1111-2222-3333-444444444444";

struct Groups(HashMap<&'static str, Vec<&'static str>>);

#[async_trait::async_trait]
impl Directory for Groups {
    async fn groups(&self, account: &str) -> Result<Vec<String>, DirectoryError> {
        if account == "broken" {
            return Err("Jira answered 503".into());
        }
        Ok(self
            .0
            .get(account)
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default())
    }
}

fn dir() -> Groups {
    Groups(HashMap::from([
        ("carol", vec!["payments-developers"]),
        ("dave", vec!["payments-leads"]),
        ("erin", vec!["web-team"]),
    ]))
}

fn ticket(key: &str, ty: &str, labels: &[&str], description: &str) -> Ticket {
    Ticket {
        key: key.into(),
        project: key.split('-').next().unwrap_or_default().into(),
        summary: "Fix it".into(),
        description: description.into(),
        reporter: None,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        issue_type: Some(ty.into()),
        url: String::new(),
        ..Ticket::default()
    }
}

fn example() -> Policy {
    parse(EXAMPLE, Path::new("examples/policy.toml")).expect("the example policy is valid")
}

async fn decide(
    p: &Policy,
    t: &Ticket,
    who: Who<&str>,
    approved_by: Option<&str>,
) -> Result<Grant, Denial> {
    p.decide(
        &Request {
            ticket: t,
            who,
            approved_by,
        },
        &dir(),
    )
    .await
}

#[tokio::test]
async fn triggers_by_account_group_operator_and_nobody_else() {
    let p = example();
    let t = ticket("PAY-1", "Bug", &[], "");
    let g = decide(&p, &t, Who::Jira(Some(ALICE)), None).await.unwrap();
    assert_eq!(g.team, "payments");
    assert_eq!(g.repo.name, "acme/payments");
    assert_eq!(g.repo.base, "main");
    assert_eq!(g.approval, Approval::NotNeeded);
    assert!(
        decide(&p, &t, Who::Jira(Some("carol")), None).await.is_ok(),
        "group member"
    );
    assert!(
        decide(&p, &t, Who::Operator("ops"), None).await.is_ok(),
        "operator"
    );

    let d = decide(&p, &t, Who::Jira(Some("mallory")), None)
        .await
        .unwrap_err();
    assert_eq!(d.rule, "trigger");
    assert!(d.reason.contains("mallory is not allowed"), "{}", d.reason);
    assert!(d
        .decisions
        .last()
        .is_some_and(|x| !x.allowed && x.rule == "trigger"));
    // Someone in another team's group is still nobody here.
    assert_eq!(
        decide(&p, &t, Who::Jira(Some("erin")), None)
            .await
            .unwrap_err()
            .rule,
        "trigger"
    );
    // Unknown trigger and a directory that fails: refused, not waved through.
    assert_eq!(
        decide(&p, &t, Who::Jira(None), None)
            .await
            .unwrap_err()
            .rule,
        "trigger"
    );
    let d = decide(&p, &t, Who::Jira(Some("broken")), None)
        .await
        .unwrap_err();
    assert!(d.reason.contains("503"), "{}", d.reason);
}

#[tokio::test]
async fn projects_repos_and_bases() {
    let p = example();
    let d = decide(
        &p,
        &ticket("OPS-1", "Bug", &[], ""),
        Who::Operator("ops"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(d.rule, "project");

    let t = ticket("PAY-2", "Task", &["repo:acme/payments-sdk"], "");
    let g = decide(&p, &t, Who::Jira(Some(ALICE)), None).await.unwrap();
    assert_eq!(
        (g.repo.name.as_str(), g.repo.base.as_str()),
        ("acme/payments-sdk", "develop")
    );

    let t = ticket("PAY-3", "Task", &[], "Please fix.\n\nrepo: `evil/exfil`\n");
    let d = decide(&p, &t, Who::Jira(Some(ALICE)), None)
        .await
        .unwrap_err();
    assert_eq!(d.rule, "repo");
    assert!(
        d.reason.contains("`evil/exfil` is not allowed"),
        "{}",
        d.reason
    );
    // Another team's repository is outside this project's list too.
    let t = ticket("PAY-4", "Task", &["repo:acme/website"], "");
    assert_eq!(
        decide(&p, &t, Who::Jira(Some(ALICE)), None)
            .await
            .unwrap_err()
            .rule,
        "repo"
    );

    let t = ticket("PAY-5", "Task", &["base:release"], "");
    assert_eq!(
        decide(&p, &t, Who::Jira(Some(ALICE)), None)
            .await
            .unwrap()
            .repo
            .base,
        "release"
    );
    let t = ticket("PAY-6", "Task", &["base:production"], "");
    assert_eq!(
        decide(&p, &t, Who::Jira(Some(ALICE)), None)
            .await
            .unwrap_err()
            .rule,
        "repo.bases"
    );
}

#[tokio::test]
async fn issue_types_and_labels() {
    let p = example();
    let d = decide(
        &p,
        &ticket("PAY-1", "Epic", &[], ""),
        Who::Jira(Some(ALICE)),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(d.rule, "issue_types");
    assert!(d.reason.contains("Epic"), "{}", d.reason);
    let d = decide(
        &p,
        &ticket("PAY-1", "bug", &["Security"], ""),
        Who::Jira(Some(ALICE)),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(d.rule, "labels.excluded");
}

#[tokio::test]
async fn approval_labels_need_an_approver() {
    let p = example();
    let t = ticket("PAY-7", "Bug", &["production"], "");
    let g = decide(&p, &t, Who::Jira(Some(ALICE)), None).await.unwrap();
    match &g.approval {
        Approval::Required {
            reason,
            approvers,
            ttl_hours,
        } => {
            assert!(reason.contains("production"));
            assert!(approvers.contains("payments-leads"));
            assert_eq!(*ttl_hours, 72);
        }
        other => panic!("{other:?}"),
    }
    let g = decide(&p, &t, Who::Jira(Some(ALICE)), Some("dave"))
        .await
        .unwrap();
    assert_eq!(g.approval, Approval::Given { by: "dave".into() });
    let g = decide(&p, &t, Who::Jira(Some(ALICE)), Some("cli:root"))
        .await
        .unwrap();
    assert_eq!(
        g.approval,
        Approval::Given {
            by: "cli:root".into()
        }
    );
    // An approval recorded for someone who is not an approver does not count.
    let d = decide(&p, &t, Who::Jira(Some(ALICE)), Some("carol"))
        .await
        .unwrap_err();
    assert_eq!(d.rule, "approval");
    assert!(p.is_approver("PAY", "dave", &dir()).await.unwrap());
    assert!(!p.is_approver("PAY", "carol", &dir()).await.unwrap());
    assert!(!p.is_approver("WEB", "dave", &dir()).await.unwrap());
    assert!(p.is_approver("WEB", BOB, &dir()).await.unwrap());
}

#[test]
fn teams_merge_defaults_key_by_key() {
    let p = example();
    let pay = p.team_for("PAY").unwrap();
    assert_eq!(pay.rules.budget.daily_cost_usd, Some(20.0), "team value");
    assert_eq!(
        pay.rules.budget.monthly_cost_usd,
        Some(500.0),
        "default kept"
    );
    assert_eq!(
        pay.rules.concurrency,
        Concurrency {
            team: Some(4),
            repo: Some(2)
        }
    );
    let web = p.team_for("web").unwrap();
    assert!(!web.rules.tools.contains(&Tool::Run));
    assert_eq!(
        web.rules.concurrency,
        Concurrency {
            team: Some(1),
            repo: Some(2)
        }
    );
    assert_eq!(web.rules.write.max_files, Some(50));
    assert_eq!(web.rules.write.exclude, ["*.log", "/tmp/"]);
    assert_eq!(p.projects(), vec!["PAY".to_string(), "WEB".to_string()]);
    assert_eq!(
        p.prices["claude-sonnet-4-5"].cost_micros(1_000_000, 100_000),
        3_000_000 + 1_500_000
    );
}

fn err(text: &str) -> String {
    parse(text, Path::new("p.toml")).unwrap_err().to_string()
}

const TEAM: &str =
    "[teams.t]\nprojects = [\"PAY\"]\nrepos = [{ name = \"a/b\" }]\ntriggers = { anyone = true }\n";

#[test]
fn errors_name_the_line_and_key() {
    let ok = format!("version = 1\n{TEAM}");
    assert!(parse(&ok, Path::new("p.toml")).is_ok());

    let e = err(&format!("version = 1\n{TEAM}max_file = 3\n"));
    assert!(e.contains("line 6") && e.contains("max_file"), "{e}");
    let e = err(&format!("version = 1\n{TEAM}tools = [\"run\", \"curl\"]\n"));
    assert!(
        e.contains("line 6") && e.contains("unknown tool `curl`"),
        "{e}"
    );
    let e = err(&format!(
        "version = 1\n{TEAM}network = \"allowlist:nope\"\n"
    ));
    assert!(e.contains("line 6") && e.contains("[egress.nope]"), "{e}");
    let e = err(&format!("version = 1\n{TEAM}[teams.u]\nprojects = [\"PAY\"]\nrepos = [{{ name = \"a/c\" }}]\ntriggers = {{ anyone = true }}\n"));
    assert!(
        e.contains("line 7") && e.contains("already belongs to team t"),
        "{e}"
    );
    let e = err(&format!(
        "version = 1\n{TEAM}approval_labels = [\"prod\"]\n"
    ));
    assert!(e.contains("nobody may approve"), "{e}");
    let e = err("version = 1\n[teams.t]\nprojects = [\"PAY\"]\nrepos = [{ name = \"a/b\" }]\n");
    assert!(e.contains("line 2") && e.contains("triggers"), "{e}");
    let e = err(&format!("version = 2\n{TEAM}"));
    assert!(e.contains("line 1") && e.contains("version 1"), "{e}");
    let e = err(&format!(
        "version = 1\n{TEAM}[teams.t.budget]\njob_cost_usd = 1.0\n"
    ));
    assert!(e.contains("price table"), "{e}");
    let e = err(&format!("version = 1\n{TEAM}repos_x = 1"));
    assert!(e.contains("repos_x"), "{e}");
    let e = err(&format!(
        "version = 1\n{TEAM}[teams.t.write]\nexclude = [\"../out\"]\n"
    ));
    assert!(e.contains("write.exclude") && e.contains("`../out`"), "{e}");
    let e = err("version = 1\n[defaults]\nprojects = [\"PAY\"]\n");
    assert!(e.contains("defaults.projects"), "{e}");
}

#[test]
fn a_fork_must_be_another_repository() {
    let team = |fork: &str| {
        format!("version = 1\n[teams.t]\nprojects = [\"PAY\"]\nrepos = [{{ name = \"a/b\", fork = \"{fork}\" }}]\ntriggers = {{ anyone = true }}\n")
    };
    let p = parse(&team("bot/b"), Path::new("p.toml")).unwrap();
    assert_eq!(p.teams[0].repos[0].fork.as_deref(), Some("bot/b"));
    let e = err(&team("A/B"));
    assert!(
        e.contains("line 4") && e.contains("names the repository itself"),
        "{e}"
    );
    let e = err(&team("bot/b/../c"));
    assert!(e.contains("not of the form owner/name"), "{e}");
}

#[test]
fn the_hash_is_the_canonical_documents() {
    let a = parse(EXAMPLE, Path::new("a")).unwrap();
    let reformatted: toml::Table = EXAMPLE.parse().unwrap();
    let b = parse(&toml::to_string(&reformatted).unwrap(), Path::new("b")).unwrap();
    assert_eq!(a.hash, b.hash);
    assert!(a.hash.starts_with("sha256:") && a.hash.len() == 71);
    let c = parse(
        &EXAMPLE.replace("max_files = 50", "max_files = 51"),
        Path::new("c"),
    )
    .unwrap();
    assert_ne!(a.hash, c.hash);
}

#[test]
fn named_fields_come_from_labels_or_description_lines() {
    let t = ticket("PAY-1", "Bug", &["repo:acme/api"], "");
    assert_eq!(named_field(&t, "repo").as_deref(), Some("acme/api"));
    let t = ticket(
        "PAY-1",
        "Bug",
        &[],
        "Fix it.\n\n*Repo:* `acme/web`\nbase: release\n",
    );
    assert_eq!(named_field(&t, "repo").as_deref(), Some("acme/web"));
    assert_eq!(named_field(&t, "base").as_deref(), Some("release"));
    assert_eq!(
        named_field(&ticket("PAY-1", "Bug", &["bug"], "no repo"), "repo"),
        None
    );
}

#[test]
fn cache_prices_are_optional_and_default_to_anthropics_multipliers() {
    let p = parse(
        &format!(
            "version = 1\n{TEAM}\n[prices.a]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n\
             [prices.b]\ninput_usd_per_mtok = 2.0\noutput_usd_per_mtok = 8.0\ncache_read_usd_per_mtok = 0.5\n\
             cache_write_usd_per_mtok = 2.0\n"
        ),
        Path::new("p.toml"),
    )
    .unwrap();
    let mtok = |input, read, write| crate::proof::bundle::ReceiptUsage {
        input_tokens: input,
        output_tokens: 0,
        cache_read_tokens: read,
        cache_write_tokens: write,
    };
    // Defaults: reads at 0.1x and writes at 1.25x the input price.
    assert_eq!(
        p.prices["a"].cost_micros_of(&mtok(1_000_000, 1_000_000, 1_000_000)),
        3_000_000 + 300_000 + 3_750_000
    );
    // Given prices win.
    assert_eq!(
        p.prices["b"].cost_micros_of(&mtok(0, 1_000_000, 1_000_000)),
        500_000 + 2_000_000
    );
    let e = err(&format!(
        "version = 1\n{TEAM}\n[prices.a]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\ncache_read_usd_per_mtok = -1.0\n"
    ));
    assert!(e.contains("prices.a.cache_read_usd_per_mtok"), "{e}");
}

async fn decide_in(
    p: &Policy,
    t: &Ticket,
    who: &str,
    dir: &dyn Directory,
) -> Result<Grant, Denial> {
    p.decide(
        &Request {
            ticket: t,
            who: Who::Jira(Some(who)),
            approved_by: None,
        },
        dir,
    )
    .await
}

/// A Data Center directory: people have a user name and a key, and names ignore letter case.
struct DataCenter;

#[async_trait::async_trait]
impl Directory for DataCenter {
    async fn groups(&self, _account: &str) -> Result<Vec<String>, DirectoryError> {
        Ok(Vec::new())
    }
    async fn identities(&self, account: &str) -> Result<Vec<String>, DirectoryError> {
        let known = [("ann", "JIRAUSER10001"), ("lin", "JIRAUSER10002")];
        let mut ids = vec![account.to_string()];
        for (name, key) in known {
            if account.eq_ignore_ascii_case(name) || account.eq_ignore_ascii_case(key) {
                ids.extend([name.to_string(), key.to_string()]);
            }
        }
        Ok(ids)
    }
    fn same_identity(&self, listed: &str, account: &str) -> bool {
        listed.eq_ignore_ascii_case(account)
    }
}

#[tokio::test]
async fn data_center_people_match_by_name_or_key() {
    let p = parse(
        "version = 1\n[teams.ops]\nprojects = [\"OPS\"]\nrepos = [{ name = \"a/b\" }]\n\
         triggers = { accounts = [\"JIRAUSER10001\"] }\napprovers = { accounts = [\"Lin\"] }\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let t = ticket("OPS-1", "Task", &[], "");
    // Listed by key, triggering by name (as a webhook names her), in any letter case.
    for who in ["ann", "ANN", "JIRAUSER10001", "jirauser10001"] {
        assert!(decide_in(&p, &t, who, &DataCenter).await.is_ok(), "{who}");
    }
    let d = decide_in(&p, &t, "mallory", &DataCenter).await.unwrap_err();
    assert_eq!(d.rule, "trigger");
    // Approvers listed by name match the key and other cases.
    for who in ["lin", "JIRAUSER10002"] {
        assert!(
            p.is_approver("OPS", who, &DataCenter).await.unwrap(),
            "{who}"
        );
    }
    assert!(!p.is_approver("OPS", "ann", &DataCenter).await.unwrap());
    // Cloud account ids are exact: another case is another id.
    let cloud = parse(
        &format!("version = 1\n[teams.ops]\nprojects = [\"OPS\"]\nrepos = [{{ name = \"a/b\" }}]\ntriggers = {{ accounts = [\"{ALICE}\"] }}\n"),
        Path::new("p.toml"),
    )
    .unwrap();
    assert!(decide_in(&cloud, &t, ALICE, &NoGroups).await.is_ok());
    assert!(decide_in(&cloud, &t, &ALICE.to_uppercase(), &NoGroups)
        .await
        .is_err());
}
