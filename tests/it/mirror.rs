//! The mirror cache (`repo::MirrorCache`) against the GitHub stand-in: real git over smart HTTP (`git http-backend`).

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use drafter::config::Secret;
use drafter::queue::JobState;
use drafter::repo::{MirrorCache, MirrorUse};
use support::git::git_in;
use support::github::GithubStandIn;
use support::harness::{wait_all_finished, Options, ServeProcess, Stack, DEMO_REPO, SECRETS};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

const TOKEN: &str = "ghp_mirror_secret_token_456";
const REPO: &str = "acme/widgets";

fn url(gh: &GithubStandIn, repo: &str) -> String {
    format!("{}/{repo}.git", gh.git_url())
}

/// A workspace from the cache, off the async threads.
async fn ws(
    cache: &MirrorCache,
    url: &str,
    dest: &Path,
    also: &[&str],
) -> (git2::Repository, MirrorUse) {
    let (cache, url, dest) = (cache.clone(), url.to_string(), dest.to_path_buf());
    let also: Vec<String> = also.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        cache
            .clone_with(&url, &dest, "main", &also, &Secret::new(TOKEN))
            .expect("workspace from the mirror")
    })
    .await
    .expect("task")
}

/// Commits `path` = `content` on top of `branch` (or as a root commit when it does not exist) in a bare repository.
fn commit_upstream(bare: &Path, branch: &str, path: &str, content: &str) -> git2::Oid {
    let r = git2::Repository::open_bare(bare).expect("open upstream");
    let refname = format!("refs/heads/{branch}");
    let parent = r
        .refname_to_id(&refname)
        .ok()
        .map(|o| r.find_commit(o).expect("parent"));
    let mut tb = r
        .treebuilder(parent.as_ref().map(|p| p.tree().expect("tree")).as_ref())
        .expect("treebuilder");
    let blob = r.blob(content.as_bytes()).expect("blob");
    tb.insert(path, blob, 0o100644).expect("insert");
    let tree = r.find_tree(tb.write().expect("write tree")).expect("tree");
    let sig = git2::Signature::now("Up", "up@example.com").expect("sig");
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    r.commit(
        Some(&refname),
        &sig,
        &sig,
        &format!("set {path}"),
        &tree,
        &parents,
    )
    .expect("commit")
}

/// Fetches a mirror's clone makes: the base alone (its pack becomes the base's seed), then every branch.
const CLONE_FETCHES: usize = 2;

/// Authenticated ref advertisements the stand-in served for `repo`: one per fetch or clone (libgit2 asks once
/// without credentials, gets 401, then again with them).
fn fetches(gh: &GithubStandIn, repo: &str) -> usize {
    gh.requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == format!("/{repo}.git/info/refs")
                && r.query.as_deref() == Some("service=git-upload-pack")
                && r.header("authorization").is_some()
        })
        .count()
}

fn head_of(r: &git2::Repository) -> git2::Oid {
    r.head().expect("head").target().expect("direct")
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_jobs_of_one_repository_share_one_fetch() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("README.md", "hello\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(tmp.path().join("mirrors"), u64::MAX);
    let u = url(&gh, REPO);
    let (_, first) = ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    assert!(first.cloned);
    assert_eq!(fetches(&gh, REPO), CLONE_FETCHES);

    // Upstream moves; two jobs start while the first one's fetch is still on the wire.
    let new_head = commit_upstream(&bare, "main", "NEW.md", "new\n");
    gh.set_git_delay(Duration::from_millis(400));
    let a = {
        let (cache, u, d) = (cache.clone(), u.clone(), tmp.path().join("wa"));
        tokio::spawn(async move { ws(&cache, &u, &d, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = {
        let (cache, u, d) = (cache.clone(), u.clone(), tmp.path().join("wb"));
        tokio::spawn(async move { ws(&cache, &u, &d, &[]).await })
    };
    let (ra, ua) = a.await.unwrap();
    let (rb, ub) = b.await.unwrap();
    assert_eq!(
        fetches(&gh, REPO),
        CLONE_FETCHES + 1,
        "one fetch for both jobs"
    );
    assert!(ua.fetched && !ua.coalesced, "{ua:?}");
    assert!(ub.coalesced && !ub.fetched, "{ub:?}");
    assert_eq!(head_of(&ra), new_head);
    assert_eq!(head_of(&rb), new_head);
    assert!(tmp.path().join("wb/NEW.md").exists());

    // A job that starts after that fetch finished fetches again.
    gh.set_git_delay(Duration::ZERO);
    let (_, later) = ws(&cache, &u, &tmp.path().join("wc"), &[]).await;
    assert!(later.fetched, "{later:?}");
    assert_eq!(fetches(&gh, REPO), CLONE_FETCHES + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_is_self_contained_and_points_at_the_forge() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("src/lib.rs", "pub fn a() {}\n")]);
    let second = commit_upstream(&bare, "main", "b.rs", "pub fn b() {}\n");
    let job_branch = commit_upstream(&bare, "drafter/DEMO-1-x", "job.txt", "mine\n");
    let theirs = commit_upstream(&bare, "someone-else", "other.txt", "theirs\n");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mirrors");
    let cache = MirrorCache::new(&root, u64::MAX);
    let u = url(&gh, REPO);
    let dest = tmp.path().join("ws");
    let (r, _) = ws(
        &cache,
        &u,
        &dest,
        &["drafter/DEMO-1-x", "drafter/DEMO-1-x-abc"],
    )
    .await;
    drop(r);

    let git_dir = dest.join(".git");
    assert!(!git_dir.join("objects/info/alternates").exists());
    let root_text = root.to_string_lossy().into_owned();
    for f in files_under(&git_dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&root_text),
            "{} names the mirror",
            f.display()
        );
    }
    let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
    assert!(config.contains(&format!("url = {u}")), "{config}");
    // Nothing of another branch: the mirror has it, the workspace (which the sandbox gets, .git included) does not.
    let theirs_blob = git2::Oid::hash_object(git2::ObjectType::Blob, b"theirs\n").unwrap();
    let mirror = git2::Repository::open_bare(cache.mirror_path(&u)).unwrap();
    assert!(mirror.find_commit(theirs).is_ok() && mirror.find_blob(theirs_blob).is_ok());
    let r = git2::Repository::open(&dest).unwrap();
    assert!(r.find_commit(theirs).is_err(), "another branch's commit");
    assert!(r.find_blob(theirs_blob).is_err(), "another branch's file");
    drop((r, mirror));

    // The mirror goes; the workspace still has every object it needs.
    std::fs::remove_dir_all(&root).unwrap();
    git_in(&dest, &["fsck", "--full", "--strict"]);
    assert_eq!(
        git_in(&dest, &["rev-parse", "HEAD"]).trim(),
        second.to_string()
    );
    assert_eq!(
        git_in(&dest, &["rev-parse", "origin/drafter/DEMO-1-x"]).trim(),
        job_branch.to_string()
    );
    assert_eq!(
        git_in(&dest, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );
    assert_eq!(
        git_in(&dest, &["rev-parse", "--abbrev-ref", "main@{upstream}"]).trim(),
        "origin/main"
    );
    // Only the base and the job's branches are refs, as with a plain clone.
    let refs = git_in(&dest, &["for-each-ref", "--format=%(refname)"]);
    let mut refs: Vec<&str> = refs.lines().collect();
    refs.sort();
    assert_eq!(
        refs,
        [
            "refs/heads/main",
            "refs/remotes/origin/drafter/DEMO-1-x",
            "refs/remotes/origin/main"
        ]
    );
    assert_eq!(git_in(&dest, &["status", "--porcelain"]), "");
    assert_eq!(
        std::fs::read_to_string(dest.join("b.rs")).unwrap(),
        "pub fn b() {}\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_lands_in_the_mirror() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.txt", "a\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mirrors");
    let cache = MirrorCache::new(&root, u64::MAX);
    let u = url(&gh, REPO);
    ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    commit_upstream(&bare, "main", "b.txt", "b\n");
    let (_, used) = ws(&cache, &u, &tmp.path().join("w2"), &[]).await;
    assert!(used.fetched);
    let files = files_under(tmp.path());
    assert!(files.len() > 10, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            f.display()
        );
    }
    let config = std::fs::read_to_string(cache.mirror_path(&u).join("config")).unwrap();
    assert!(config.contains(&format!("url = {u}")), "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_mirror_is_recloned_and_the_job_goes_on() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.txt", "a\n")]);
    for i in 0..20 {
        commit_upstream(
            &bare,
            "main",
            &format!("f{i}.txt"),
            &format!("{i}\n").repeat(200),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(tmp.path().join("mirrors"), u64::MAX);
    let u = url(&gh, REPO);
    let mirror = cache.mirror_path(&u);
    ws(&cache, &u, &tmp.path().join("w0"), &[]).await;

    // Truncated packs.
    let packs: Vec<PathBuf> = files_under(&mirror.join("objects/pack"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    assert!(!packs.is_empty());
    for p in &packs {
        let len = std::fs::metadata(p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    let head = commit_upstream(&bare, "main", "after.txt", "after\n");
    let (r, used) = ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    assert!(used.repaired, "{used:?}");
    assert_eq!(head_of(&r), head);
    git_in(&tmp.path().join("w1"), &["fsck", "--full"]);

    // Objects deleted (refs intact): the fetch finds nothing new, the workspace cannot be made, the mirror is
    // re-cloned.
    for p in files_under(&mirror.join("objects")) {
        std::fs::remove_file(p).unwrap();
    }
    let (r, used) = ws(&cache, &u, &tmp.path().join("w2"), &[]).await;
    assert!(used.repaired, "{used:?}");
    assert_eq!(head_of(&r), head);
    git_in(&tmp.path().join("w2"), &["fsck", "--full"]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("w2/f7.txt")).unwrap(),
        "7\n".repeat(200)
    );

    // A damaged workspace seed (the packs workspaces copy).
    let seeds: Vec<PathBuf> = files_under(&mirror.join("drafter-seeds"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    assert!(!seeds.is_empty());
    for p in &seeds {
        let len = std::fs::metadata(p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
    }
    let (r, used) = ws(&cache, &u, &tmp.path().join("w2b"), &[]).await;
    assert!(used.repaired, "{used:?}");
    assert_eq!(head_of(&r), head);
    git_in(&tmp.path().join("w2b"), &["fsck", "--full"]);

    // A mirror that is not a repository any more.
    std::fs::remove_file(mirror.join("HEAD")).unwrap();
    let (r, used) = ws(&cache, &u, &tmp.path().join("w3"), &[]).await;
    assert!(used.repaired && used.cloned, "{used:?}");
    assert_eq!(head_of(&r), head);
}

#[tokio::test(flavor = "multi_thread")]
async fn force_pushed_and_deleted_branches_are_reflected() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.txt", "a\n")]);
    let moved = "drafter/DEMO-2-moved";
    let gone = "drafter/DEMO-2-gone";
    let before = commit_upstream(&bare, moved, "x.txt", "first\n");
    commit_upstream(&bare, gone, "y.txt", "y\n");
    let tmp = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(tmp.path().join("mirrors"), u64::MAX);
    let u = url(&gh, REPO);
    let (r, _) = ws(&cache, &u, &tmp.path().join("w0"), &[moved, gone]).await;
    assert_eq!(
        r.refname_to_id(&format!("refs/remotes/origin/{moved}"))
            .unwrap(),
        before
    );
    assert!(r
        .refname_to_id(&format!("refs/remotes/origin/{gone}"))
        .is_ok());

    // Force-push `moved` to an unrelated history; delete `gone`.
    let up = git2::Repository::open_bare(&bare).unwrap();
    up.find_reference(&format!("refs/heads/{moved}"))
        .unwrap()
        .delete()
        .unwrap();
    up.find_reference(&format!("refs/heads/{gone}"))
        .unwrap()
        .delete()
        .unwrap();
    let after = commit_upstream(&bare, moved, "z.txt", "rewritten\n");
    assert_ne!(after, before);

    let (r, used) = ws(&cache, &u, &tmp.path().join("w1"), &[moved, gone]).await;
    assert!(used.fetched);
    assert_eq!(
        r.refname_to_id(&format!("refs/remotes/origin/{moved}"))
            .unwrap(),
        after
    );
    assert!(r
        .refname_to_id(&format!("refs/remotes/origin/{gone}"))
        .is_err());
    let mirror = git2::Repository::open_bare(cache.mirror_path(&u)).unwrap();
    assert!(
        mirror.refname_to_id(&format!("refs/heads/{gone}")).is_err(),
        "pruned"
    );
    assert_eq!(
        mirror
            .refname_to_id(&format!("refs/heads/{moved}"))
            .unwrap(),
        after
    );
    drop((r, mirror));

    // The base itself force-pushed to a new history: the workspace has that history and nothing of the old one.
    let old_main = up.refname_to_id("refs/heads/main").unwrap();
    up.find_reference("refs/heads/main")
        .unwrap()
        .delete()
        .unwrap();
    let new_main = commit_upstream(&bare, "main", "fresh.txt", "fresh\n");
    let dest = tmp.path().join("w2");
    let (r, used) = ws(&cache, &u, &dest, &[moved]).await;
    assert!(used.fetched && !used.repaired, "{used:?}");
    assert_eq!(head_of(&r), new_main);
    assert!(r.find_commit(old_main).is_err(), "the old base's history");
    assert_eq!(
        r.refname_to_id(&format!("refs/remotes/origin/{moved}"))
            .unwrap(),
        after
    );
    git_in(&dest, &["fsck", "--full", "--strict"]);
    assert!(dest.join("fresh.txt").exists() && !dest.join("a.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_the_cache_under_its_bound_least_recently_used_first() {
    let gh = GithubStandIn::start(TOKEN).await;
    let names = ["acme/one", "acme/two", "acme/three"];
    for (i, n) in names.iter().enumerate() {
        // Incompressible-ish content, so each mirror's size is its own.
        let body: String = (0..4000u64)
            .map(|k| {
                format!(
                    "{:016x}\n",
                    (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64
                )
            })
            .collect();
        gh.create_repo(n, &[("data.txt", body.as_str())]);
    }
    let tmp = tempfile::tempdir().unwrap();
    // Sizes, from an unbounded cache.
    let probe = MirrorCache::new(tmp.path().join("probe"), u64::MAX);
    let mut sizes = Vec::new();
    for n in names {
        let u = url(&gh, n);
        ws(
            &probe,
            &u,
            &tmp.path().join(format!("p-{}", n.replace('/', "-"))),
            &[],
        )
        .await;
        let one = MirrorCache::new(probe.mirror_path(&u), u64::MAX).size();
        sizes.push(one);
    }
    let [s1, s2, s3] = [sizes[0], sizes[1], sizes[2]];
    let bound = (s1 + s2).max(s1 + s3) + s2 / 2;
    assert!(bound < s1 + s2 + s3);

    let root = tmp.path().join("mirrors");
    let cache = MirrorCache::new(&root, bound);
    let [u1, u2, u3] = names.map(|n| url(&gh, n));
    ws(&cache, &u1, &tmp.path().join("a"), &[]).await;
    ws(&cache, &u2, &tmp.path().join("b"), &[]).await;
    // `one` used again: `two` is now the least recently used.
    ws(&cache, &u1, &tmp.path().join("c"), &[]).await;
    assert!(cache.mirror_path(&u2).exists());
    ws(&cache, &u3, &tmp.path().join("d"), &[]).await;
    assert!(cache.mirror_path(&u1).exists());
    assert!(
        !cache.mirror_path(&u2).exists(),
        "least recently used evicted"
    );
    assert!(cache.mirror_path(&u3).exists());
    assert!(cache.size() <= bound, "{} > {bound}", cache.size());

    // An evicted mirror comes back on its next use.
    let (_, used) = ws(&cache, &u2, &tmp.path().join("e"), &[]).await;
    assert!(used.cloned);
    assert!(cache.size() <= bound, "{} > {bound}", cache.size());
}

#[tokio::test(flavor = "multi_thread")]
async fn many_fetches_leave_few_packs() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.txt", "a\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(tmp.path().join("mirrors"), u64::MAX);
    let u = url(&gh, REPO);
    let packs = |c: &MirrorCache| {
        files_under(&c.mirror_path(&u).join("objects/pack"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .count()
    };
    let mut most = 0;
    for i in 0..24 {
        // One job's pushed branch each time, as in a busy repository.
        commit_upstream(
            &bare,
            &format!("drafter/DEMO-{i}-x"),
            "x.txt",
            &format!("{i}\n"),
        );
        let head = commit_upstream(&bare, "main", &format!("f{i}.txt"), &format!("{i}\n"));
        let dest = tmp.path().join(format!("w{i}"));
        let (r, used) = ws(&cache, &u, &dest, &[]).await;
        assert!(i == 0 || used.fetched, "{used:?}");
        assert_eq!(head_of(&r), head);
        most = most.max(packs(&cache));
        drop(r);
        std::fs::remove_dir_all(&dest).unwrap();
    }
    assert!(most <= 17, "{most} packs");
    // Everything is still there: a workspace has the whole history, and git agrees the mirror is sound.
    let dest = tmp.path().join("last");
    ws(&cache, &u, &dest, &["drafter/DEMO-3-x"]).await;
    git_in(&dest, &["fsck", "--full", "--strict"]);
    assert_eq!(git_in(&dest, &["rev-list", "--count", "HEAD"]).trim(), "25");
    git_in(&cache.mirror_path(&u), &["fsck", "--full"]);
}

/// `drafter serve` with two jobs of one repository at once: both delivered, on one fetch from the forge, each
/// workspace made from the mirror in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_runs_two_jobs_of_one_repository_on_one_fetch() {
    let _serial = support::POOL_SERIAL.lock().await;
    let stack = Stack::start(Options {
        per_conversation: true,
        extra_toml: r#"[serve]
listen = "127.0.0.1:0"
webhook_secret_env = "DRAFTER_TEST_WEBHOOK_SECRET"
concurrency = 2
per_project = 2
lease_secs = 30
heartbeat_secs = 1
drain_timeout_secs = 60
idle_poll_ms = 100
"#
        .into(),
        ..Options::default()
    })
    .await;
    // DEMO-100, DEMO-102 and DEMO-104 are acme/widgets tickets (the OTHER ones are not assigned).
    let keys = stack.burst_tickets(5);
    // Slow git answers keep the first job's mirror clone on the wire while the second job reaches its clone.
    stack.github.set_git_delay(Duration::from_millis(1500));
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    serve.assign(&client, &keys[0], 70_001).await;
    serve.assign(&client, &keys[2], 70_002).await;
    let queue = stack.queue().await;
    wait_all_finished(queue.as_ref(), 2, Duration::from_secs(240)).await;
    // A later job of the repository: one fetch of its own, and the workspace a spare made after the first two.
    stack.github.set_git_delay(Duration::ZERO);
    serve.assign(&client, &keys[4], 70_003).await;
    let jobs = wait_all_finished(queue.as_ref(), 3, Duration::from_secs(240)).await;
    let log = serve.stop().await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}\n{log}"
    );
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 3);
    // The mirror's clone, for both first jobs; one fetch for the third.
    assert_eq!(
        fetches(&stack.github, DEMO_REPO),
        CLONE_FETCHES + 1,
        "{log}"
    );
    assert_eq!(
        log.matches("workspace made from the mirror").count(),
        3,
        "{log}"
    );
    assert!(log.contains("coalesced=true"), "{log}");
    assert_eq!(log.matches("spare=true").count(), 1, "{log}");
    let root = stack.data_dir().join("mirrors");
    for f in files_under(&root) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for secret in SECRETS {
            assert!(!text.contains(secret), "a secret in {}", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_killed_process_left_half_made_is_cleared() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.txt", "a\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mirrors");
    let cache = MirrorCache::new(&root, u64::MAX);
    let u = url(&gh, REPO);
    let mirror = cache.mirror_path(&u);
    // A mirror clone killed half way, before the first use.
    let half = mirror.with_extension("tmp");
    std::fs::create_dir_all(half.join("objects")).unwrap();
    std::fs::write(half.join("objects/junk"), "x").unwrap();
    ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    assert!(!half.exists());
    // A seed rebuild killed half way.
    let seeds = mirror.join("drafter-seeds");
    let half_seed = seeds.join("0123456789abcdef.tmp");
    std::fs::create_dir_all(&half_seed).unwrap();
    std::fs::write(half_seed.join("base"), "main").unwrap();
    let head = commit_upstream(&bare, "main", "b.txt", "b\n");
    let (r, used) = ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    assert!(used.fetched && !used.repaired, "{used:?}");
    assert_eq!(head_of(&r), head);
    assert!(!half_seed.exists());
    assert_eq!(std::fs::read_dir(&seeds).unwrap().count(), 1);
}

/// Replaces `branch` upstream with a commit whose tree is exactly `files` (deleting the rest), parented on the
/// branch's tip unless `orphan` (a force-push).
fn set_tree_upstream(bare: &Path, branch: &str, files: &[(&str, &str)], orphan: bool) -> git2::Oid {
    let r = git2::Repository::open_bare(bare).expect("open upstream");
    let refname = format!("refs/heads/{branch}");
    let parent = match orphan {
        true => None,
        false => Some(r.find_commit(r.refname_to_id(&refname).unwrap()).unwrap()),
    };
    let tree = r.find_tree(support::git::tree_of(&r, files)).unwrap();
    let sig = git2::Signature::now("Up", "up@example.com").unwrap();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = r
        .commit(None, &sig, &sig, "set tree", &tree, &parents)
        .unwrap();
    r.reference(&refname, oid, true, "set tree").unwrap();
    oid
}

/// The tip of `main` in the bare repository at `bare`.
fn main_tip(bare: &Path) -> git2::Oid {
    git2::Repository::open_bare(bare)
        .unwrap()
        .refname_to_id("refs/heads/main")
        .unwrap()
}

/// An unbounded cache under `dir` (`dir/mirrors`) keeping spares in `dir/spares`, and that directory.
fn spared_cache(dir: &Path) -> (MirrorCache, PathBuf) {
    let spares = dir.join("spares");
    let cache = MirrorCache::new(dir.join("mirrors"), u64::MAX).with_spares(&spares);
    (cache, spares)
}

/// Entries of the spares directory (settled first), by name.
fn spares_in(cache: &MirrorCache, dir: &Path) -> Vec<String> {
    cache.settle();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What a job must find whichever way its workspace was made: the files of `expect` and no others, HEAD on `main`
/// at `tip` tracking `origin/main`, a clean status, and every object present without the mirror's help.
fn assert_workspace(dest: &Path, tip: git2::Oid, expect: &[(&str, &str)]) {
    assert_eq!(git_in(dest, &["rev-parse", "HEAD"]).trim(), tip.to_string());
    assert_eq!(
        git_in(dest, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );
    assert_eq!(
        git_in(dest, &["rev-parse", "--abbrev-ref", "main@{upstream}"]).trim(),
        "origin/main"
    );
    assert_eq!(git_in(dest, &["status", "--porcelain", "--ignored"]), "");
    let mut files: Vec<String> = files_under(dest)
        .into_iter()
        .filter(|p| !p.starts_with(dest.join(".git")))
        .map(|p| p.strip_prefix(dest).unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want: Vec<String> = expect.iter().map(|(p, _)| p.to_string()).collect();
    want.sort();
    assert_eq!(files, want);
    for (p, content) in expect {
        assert_eq!(
            std::fs::read_to_string(dest.join(p)).unwrap(),
            *content,
            "{p}"
        );
    }
    assert!(
        !dest.join(".git/drafter-spare").exists(),
        "the spare's marker reached the job"
    );
    assert!(!dest.join(".git/objects/info/alternates").exists());
    git_in(dest, &["fsck", "--full", "--strict"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spare_workspace_serves_the_next_job_and_follows_the_base() {
    let gh = GithubStandIn::start(TOKEN).await;
    let v1 = [
        ("a.rs", "a1\n"),
        ("gone.rs", "soon gone\n"),
        ("d/k.rs", "k\n"),
        ("old/x.rs", "x\n"),
    ];
    let bare = gh.create_repo(REPO, &v1);
    let t1 = main_tip(&bare);
    let theirs = commit_upstream(&bare, "someone-else", "other.txt", "theirs\n");
    let tmp = tempfile::tempdir().unwrap();
    let (cache, spares) = spared_cache(tmp.path());
    let u = url(&gh, REPO);

    // First use: no spare yet; one is made in the background afterwards.
    let (_, used) = ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    assert!(used.cloned && !used.spare, "{used:?}");
    assert_eq!(spares_in(&cache, &spares).len(), 1);

    // The next job takes it, and it is what a workspace made on the path would be.
    let (r, used) = ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    assert!(used.spare, "{used:?}");
    assert!(r.find_commit(theirs).is_err(), "another branch's commit");
    drop(r);
    assert_workspace(&tmp.path().join("w1"), t1, &v1);

    // The base moves forward, changing, adding and deleting files: the spare (made at the old tip) follows it.
    assert_eq!(spares_in(&cache, &spares).len(), 1, "a spare again");
    let v2 = [("a.rs", "a2\n"), ("d/k.rs", "k\n"), ("d/new.rs", "new\n")];
    let t2 = set_tree_upstream(&bare, "main", &v2, false);
    let (_, used) = ws(&cache, &u, &tmp.path().join("w2"), &[]).await;
    assert!(used.spare && used.fetched, "{used:?}");
    assert_workspace(&tmp.path().join("w2"), t2, &v2);
    assert!(
        !tmp.path().join("w2/old").exists(),
        "a directory the base deleted stayed"
    );

    // With the job's branch: it is added to the spare, as to any workspace.
    spares_in(&cache, &spares);
    let job = commit_upstream(&bare, "drafter/DEMO-1-x", "job.txt", "mine\n");
    let (_, used) = ws(&cache, &u, &tmp.path().join("w3"), &["drafter/DEMO-1-x"]).await;
    assert!(used.spare, "{used:?}");
    let w3 = tmp.path().join("w3");
    assert_eq!(
        git_in(&w3, &["rev-parse", "origin/drafter/DEMO-1-x"]).trim(),
        job.to_string()
    );
    git_in(&w3, &["cat-file", "-e", &format!("{job}:job.txt")]);
    // The workspace is the job's alone: writing in it changes no spare.
    std::fs::write(w3.join("a.rs"), "the job's edit\n").unwrap();
    spares_in(&cache, &spares);
    let (_, used) = ws(&cache, &u, &tmp.path().join("w4"), &[]).await;
    assert!(used.spare, "{used:?}");
    assert_workspace(&tmp.path().join("w4"), t2, &v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_pushed_base_is_not_served_from_the_old_spare() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = gh.create_repo(REPO, &[("a.rs", "old\n"), ("b.rs", "b\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let (cache, spares) = spared_cache(tmp.path());
    let u = url(&gh, REPO);
    ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    assert_eq!(spares_in(&cache, &spares).len(), 1);

    let rewritten = [("a.rs", "rewritten\n")];
    let tip = set_tree_upstream(&bare, "main", &rewritten, true);
    let (_, used) = ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    assert!(!used.spare, "the old spare is of another history: {used:?}");
    assert_workspace(&tmp.path().join("w1"), tip, &rewritten);
    // Thrown away, and a new one made at the new tip.
    let names = spares_in(&cache, &spares);
    assert_eq!(names.len(), 1, "{names:?}");
    let (_, used) = ws(&cache, &u, &tmp.path().join("w2"), &[]).await;
    assert!(used.spare, "{used:?}");
    assert_workspace(&tmp.path().join("w2"), tip, &rewritten);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_jobs_racing_for_one_spare_both_get_a_whole_workspace() {
    let gh = GithubStandIn::start(TOKEN).await;
    let files = [("a.rs", "a\n"), ("d/b.rs", "b\n")];
    let bare = gh.create_repo(REPO, &files);
    let tip = main_tip(&bare);
    let tmp = tempfile::tempdir().unwrap();
    let (cache, spares) = spared_cache(tmp.path());
    let u = url(&gh, REPO);
    ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    for round in 0..3 {
        spares_in(&cache, &spares);
        let jobs: Vec<_> = (0..3)
            .map(|i| {
                let (cache, u, d) = (
                    cache.clone(),
                    u.clone(),
                    tmp.path().join(format!("r{round}-{i}")),
                );
                tokio::spawn(async move { ws(&cache, &u, &d, &[]).await.1 })
            })
            .collect();
        let mut took = 0;
        for j in jobs {
            took += usize::from(j.await.unwrap().spare);
        }
        // One spare is there at the start; a job may find the next one already made (small repository).
        assert!(took >= 1, "the spare was taken");
        for i in 0..3 {
            assert_workspace(&tmp.path().join(format!("r{round}-{i}")), tip, &files);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spares_stay_off_in_a_directory_others_can_use() {
    use std::os::unix::fs::PermissionsExt;
    let gh = GithubStandIn::start(TOKEN).await;
    gh.create_repo(REPO, &[("a.rs", "a\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let u = url(&gh, REPO);
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = tmp.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (n, dir) in [("open", &open), ("link", &link)] {
        let cache = MirrorCache::new(tmp.path().join(format!("m-{n}")), u64::MAX).with_spares(dir);
        for i in 0..2 {
            let (_, used) = ws(&cache, &u, &tmp.path().join(format!("{n}-{i}")), &[]).await;
            assert!(!used.spare, "{n}: {used:?}");
        }
        assert!(spares_in(&cache, dir).is_empty(), "{n}: nothing made there");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spares_go_with_their_mirror() {
    let gh = GithubStandIn::start(TOKEN).await;
    for n in ["acme/one", "acme/two"] {
        let body: String = (0..4000u64)
            .map(|k| {
                format!(
                    "{:016x}\n",
                    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.len() as u64
                )
            })
            .collect();
        gh.create_repo(n, &[("data.txt", body.as_str()), ("n.txt", n)]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let spares = tmp.path().join("spares");
    let [u1, u2] = ["acme/one", "acme/two"].map(|n| url(&gh, n));
    // Room for one mirror and its spare only.
    let probe = MirrorCache::new(tmp.path().join("probe"), u64::MAX);
    ws(&probe, &u1, &tmp.path().join("p"), &[]).await;
    let one = probe.size();
    let cache = MirrorCache::new(tmp.path().join("mirrors"), one * 3 / 2).with_spares(&spares);
    ws(&cache, &u1, &tmp.path().join("a"), &[]).await;
    assert_eq!(spares_in(&cache, &spares).len(), 1);
    ws(&cache, &u2, &tmp.path().join("b"), &[]).await;
    assert!(!cache.mirror_path(&u1).exists(), "evicted");
    let names = spares_in(&cache, &spares);
    assert_eq!(
        names.len(),
        1,
        "the evicted mirror's spare went with it: {names:?}"
    );
    let (_, used) = ws(&cache, &u2, &tmp.path().join("c"), &[]).await;
    assert!(used.spare, "{used:?}");

    // A spare whose mirror is gone some other way (its cache deleted) is swept by the next build.
    spares_in(&cache, &spares);
    std::fs::remove_dir_all(tmp.path().join("mirrors")).unwrap();
    let other = MirrorCache::new(tmp.path().join("mirrors2"), u64::MAX).with_spares(&spares);
    ws(&other, &u1, &tmp.path().join("d"), &[]).await;
    let names = spares_in(&other, &spares);
    assert_eq!(names.len(), 1, "only the new mirror's spare: {names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_old_spare_is_thrown_away_and_costs_the_mirror_nothing() {
    let gh = GithubStandIn::start(TOKEN).await;
    let files: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("src/f{i}.rs"),
                format!("pub fn f{i}() -> u32 {{ {i} }}\n").repeat(20),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let bare = gh.create_repo(REPO, &refs);
    let tip = main_tip(&bare);
    let tmp = tempfile::tempdir().unwrap();
    let (cache, spares) = spared_cache(tmp.path());
    let u = url(&gh, REPO);
    ws(&cache, &u, &tmp.path().join("w0"), &[]).await;
    let spare_of = |cache: &MirrorCache| {
        let names = spares_in(cache, &spares);
        assert_eq!(names.len(), 1, "{names:?}");
        spares.join(&names[0])
    };

    // A pack cut short (its blobs come last: the commit and tree still read).
    let spare = spare_of(&cache);
    let pack = std::fs::read_dir(spare.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (_, used) = ws(&cache, &u, &tmp.path().join("w1"), &[]).await;
    assert!(!used.spare && !used.repaired && !used.cloned, "{used:?}");
    assert_workspace(&tmp.path().join("w1"), tip, &refs);

    // A spare made more than a day ago.
    let spare = spare_of(&cache);
    let marker = spare.join(".git/drafter-spare");
    let text = std::fs::read_to_string(&marker).unwrap();
    let old: String = text
        .lines()
        .map(|l| {
            if l.starts_with("made=") {
                "made=1000".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&marker, old).unwrap();
    let (_, used) = ws(&cache, &u, &tmp.path().join("w2"), &[]).await;
    assert!(!used.spare && !used.repaired, "{used:?}");
    assert_workspace(&tmp.path().join("w2"), tip, &refs);

    // A fresh, whole one is used.
    spare_of(&cache);
    let (_, used) = ws(&cache, &u, &tmp.path().join("w3"), &[]).await;
    assert!(used.spare, "{used:?}");
    assert_workspace(&tmp.path().join("w3"), tip, &refs);
}
