//! The workspace side of the mirror: the per-base seeds (packs of exactly what a base branch reaches) and the
//! workspace made from them.

use super::*;

/// Why a workspace could not be made from the mirror.
pub(super) enum Built {
    /// The mirror's objects or refs are unreadable: worth re-cloning it.
    Corrupt(RepoError),
    /// The base's seed is not at the base's tip (another job's fetch moved the branch since this job's refresh).
    Stale,
    /// Anything else (a branch the remote lacks, the workspace directory).
    Other(RepoError),
}

impl Built {
    pub(super) fn into_error(self) -> RepoError {
        match self {
            Built::Corrupt(e) | Built::Other(e) => e,
            Built::Stale => RepoError::Git {
                context: "making the workspace from the mirror".into(),
                message: "the base branch kept moving".into(),
                class: ErrorClass::Odb,
            },
        }
    }
}

/// The tips of `base` and of each branch of `also` the mirror has, the base first.
pub(super) fn tips(
    mirror: &Repository,
    base: &str,
    also: &[String],
) -> Result<Vec<(String, Oid)>, Built> {
    let mut tips = Vec::new();
    for b in std::iter::once(base).chain(also.iter().map(String::as_str)) {
        match mirror.refname_to_id(&format!("refs/heads/{b}")) {
            Ok(oid) => tips.push((b.to_string(), oid)),
            Err(e) if e.code() == ErrorCode::NotFound && b == base => {
                return Err(Built::Other(RepoError::BranchNotFound {
                    branch: base.to_string(),
                    remote: true,
                }))
            }
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err(corrupt("reading the mirror's branches")(e)),
        }
    }
    Ok(tips)
}

fn corrupt(context: &'static str) -> impl Fn(git2::Error) -> Built {
    move |e| Built::Corrupt(local(context, e))
}

fn other(context: &'static str) -> impl Fn(git2::Error) -> Built {
    move |e| Built::Other(local(context, e))
}

/// Makes the workspace at `dest` from the mirror at `dir`: the base's seed copied in, a pack of what the branches
/// of `also` add to it, `origin` at `url`, the refs a clone of `base` and `also` would have, and (with `checkout`)
/// the base checked out. No object reachable only from another branch enters the workspace. Every object the
/// workspace needs is read once (the checkout reads the base's tree; the other branches' commits and trees are
/// looked up), so a mirror that lost or damaged one fails here rather than later. Without `checkout` the workspace
/// is self-contained but its files are not written: [`super::spare`] does that without the mirror's lock.
pub(super) fn workspace_from(
    dir: &Path,
    url: &str,
    dest: &Path,
    base: &str,
    also: &[String],
    checkout: bool,
) -> Result<Repository, Built> {
    let mirror = Repository::open_bare(dir).map_err(corrupt("opening the mirror"))?;
    let tips = tips(&mirror, base, also)?;
    let seed = seed_dir(dir, base);
    if read_text(&seed.join("tip")).as_deref() != Some(tips[0].1.to_string().as_str()) {
        return Err(Built::Stale);
    }

    let repo =
        Repository::init(dest).map_err(|e| Built::Other(local("creating the workspace", e)))?;
    let pack_dir = repo.path().join("objects").join("pack");
    copy_packs(&seed, &pack_dir, |_| true).map_err(Built::Corrupt)?;
    pack_branches(&mirror, &tips, &pack_dir)?;
    drop(mirror);
    drop(repo);
    // Reopened so the object database sees the packs copied in.
    let repo =
        Repository::open(dest).map_err(|e| Built::Other(local("opening the workspace", e)))?;
    point_refs(&repo, url, &tips)?;
    if checkout {
        repo.checkout_head(Some(CheckoutBuilder::new().force()))
            .map_err(corrupt("checking out the base branch"))?;
    }
    Ok(repo)
}

/// Writes into `pack_dir` a pack of what the job's branches (`tips` after the base) add to the base, straight from
/// the mirror (usually nothing: they rarely exist).
pub(super) fn pack_branches(
    mirror: &Repository,
    tips: &[(String, Oid)],
    pack_dir: &Path,
) -> Result<(), Built> {
    if tips.len() < 2 {
        return Ok(());
    }
    let mut walk = mirror
        .revwalk()
        .map_err(corrupt("listing the job's branches"))?;
    for (_, oid) in &tips[1..] {
        walk.push(*oid)
            .map_err(corrupt("listing the job's branches"))?;
    }
    walk.hide(tips[0].1)
        .map_err(corrupt("listing the job's branches"))?;
    let mut pb = mirror
        .packbuilder()
        .map_err(corrupt("packing the job's branches"))?;
    pb.insert_walk(&mut walk)
        .map_err(corrupt("packing the job's branches"))?;
    if pb.object_count() > 0 {
        pb.write(pack_dir, 0)
            .map_err(corrupt("packing the job's branches"))?;
    }
    Ok(())
}

/// Points the workspace's refs where a clone of `tips` would: `origin` at `url` fetching each branch,
/// `refs/remotes/origin/<b>` at each tip (whose commit and tree are looked up, so a missing object shows here),
/// the base as a local branch tracking its remote one, and HEAD on it. The files are not touched. A workspace that
/// has an `origin` already (a spare) keeps it and gains the branches it lacks.
pub(super) fn point_refs(
    repo: &Repository,
    url: &str,
    tips: &[(String, Oid)],
) -> Result<(), Built> {
    let specs: Vec<String> = tips
        .iter()
        .map(|(b, _)| format!("+refs/heads/{b}:refs/remotes/origin/{b}"))
        .collect();
    let have: Vec<String> = match repo.find_remote("origin") {
        Ok(r) => {
            let specs = r.fetch_refspecs().map_err(other("reading origin"))?;
            (0..specs.len())
                .filter_map(|i| specs.get(i).ok().flatten().map(String::from))
                .collect()
        }
        Err(e) if e.code() == ErrorCode::NotFound => {
            repo.remote_with_fetch("origin", url, &specs[0])
                .map_err(other("configuring origin"))?;
            vec![specs[0].clone()]
        }
        Err(e) => return Err(other("reading origin")(e)),
    };
    for spec in specs.iter().filter(|s| !have.contains(s)) {
        repo.remote_add_fetch("origin", spec)
            .map_err(other("configuring origin"))?;
    }
    for (b, oid) in tips {
        let commit = repo
            .find_commit(*oid)
            .map_err(corrupt("reading a branch's commit"))?;
        commit.tree().map_err(corrupt("reading a branch's tree"))?;
        repo.reference(
            &format!("refs/remotes/origin/{b}"),
            *oid,
            true,
            "clone: from mirror",
        )
        .map_err(other("writing a remote-tracking branch"))?;
    }
    let (base, tip) = &tips[0];
    // A reference, not `Repository::branch`: libgit2 will not force-move the branch HEAD is on, as a spare's is.
    repo.reference(
        &format!("refs/heads/{base}"),
        *tip,
        true,
        "clone: from mirror",
    )
    .map_err(other("creating the base branch"))?;
    let mut branch = repo
        .find_branch(base, git2::BranchType::Local)
        .map_err(other("creating the base branch"))?;
    branch
        .set_upstream(Some(&format!("origin/{base}")))
        .map_err(other("setting the base branch's upstream"))?;
    repo.set_head(&format!("refs/heads/{base}"))
        .map_err(other("pointing HEAD at the base branch"))?;
    Ok(())
}

/// Copies the pack files (`.pack`, `.idx`) of `from` whose names `want` accepts into `to`.
pub(super) fn copy_packs(
    from: &Path,
    to: &Path,
    want: impl Fn(&std::ffi::OsStr) -> bool,
) -> Result<(), RepoError> {
    fs::create_dir_all(to).map_err(io("creating the workspace's packs", to))?;
    let entries = fs::read_dir(from).map_err(io("listing the seed", from))?;
    for entry in entries {
        let entry = entry.map_err(io("listing the seed", from))?;
        let name = entry.file_name();
        let keep = {
            let n = name.to_string_lossy();
            n.ends_with(".pack") || n.ends_with(".idx")
        };
        if keep && want(&name) {
            let dst = to.join(&name);
            fs::copy(entry.path(), &dst).map_err(io("copying the seed", &dst))?;
        }
    }
    Ok(())
}

/// Where the seed of `base` lives: named by a digest, the branch name is in its `base` file.
pub(super) fn seed_dir(dir: &Path, base: &str) -> PathBuf {
    let digest = Sha256::digest(base.as_bytes());
    dir.join(SEEDS_DIR).join(hex::encode(&digest[..8]))
}

/// Brings the seed of `base`, and with `all` every other seed, to its branch's tip in the mirror; a seed whose branch
/// is gone is removed.
pub(super) fn update_seeds(
    mirror: &Repository,
    dir: &Path,
    base: &str,
    all: bool,
) -> Result<(), RepoError> {
    let mut bases = vec![base.to_string()];
    if all {
        if let Ok(entries) = fs::read_dir(dir.join(SEEDS_DIR)) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    // Left by a process killed while rebuilding a seed (the exclusive lock is held).
                    let _ = fs::remove_dir_all(e.path());
                    continue;
                }
                match read_text(&e.path().join("base")) {
                    Some(b) if b != base => bases.push(b),
                    Some(_) => {}
                    // Half made (no `base` yet): of no use.
                    None => {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }
    for b in bases {
        update_seed(mirror, dir, &b)?;
    }
    Ok(())
}

/// Makes the mirror's one pack (a first fetch of `base` alone) the seed of `base`: it holds exactly what the branch
/// reaches. Nothing when the mirror holds another number of packs.
pub(super) fn adopt_first_pack(
    mirror: &Repository,
    dir: &Path,
    base: &str,
) -> Result<(), RepoError> {
    let tip = match mirror.refname_to_id(&format!("refs/heads/{base}")) {
        Ok(tip) => tip,
        Err(_) => return Ok(()),
    };
    let packs = pack_files(dir);
    let [pack] = packs.as_slice() else {
        return Ok(());
    };
    let seed = seed_dir(dir, base);
    fs::create_dir_all(&seed).map_err(io("creating a seed", &seed))?;
    for file in [pack.clone(), pack.with_extension("idx")] {
        let name = file.file_name().unwrap_or_default();
        let dst = seed.join(name);
        fs::copy(&file, &dst).map_err(io("creating a seed", &dst))?;
    }
    write_text(&seed.join("base"), base);
    write_text(&seed.join("tip"), &tip.to_string());
    Ok(())
}

/// One seed: nothing when it is at the tip; a pack of the new objects when the branch moved forward; rebuilt
/// (made beside it, then renamed into place) when it is new, was force-pushed, or has too many packs.
fn update_seed(mirror: &Repository, dir: &Path, base: &str) -> Result<(), RepoError> {
    let seed = seed_dir(dir, base);
    let tip = match mirror.refname_to_id(&format!("refs/heads/{base}")) {
        Ok(tip) => tip,
        Err(e) if e.code() == ErrorCode::NotFound => {
            let _ = fs::remove_dir_all(&seed);
            return Ok(());
        }
        Err(e) => return Err(local("reading the mirror's branches", e)),
    };
    let had = read_text(&seed.join("tip")).and_then(|t| Oid::from_str(&t).ok());
    if had == Some(tip) {
        return Ok(());
    }
    let packs = fs::read_dir(&seed)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .count()
        })
        .unwrap_or(0);
    let forward = had
        .filter(|h| packs < MAX_SEED_PACKS && mirror.graph_descendant_of(tip, *h).unwrap_or(false));
    let target = match forward {
        Some(_) => seed.clone(),
        None => seed.with_extension("tmp"),
    };
    if forward.is_none() {
        let _ = fs::remove_dir_all(&target);
    }
    fs::create_dir_all(&target).map_err(io("creating a seed", &target))?;
    let ctx = "packing a base branch for workspaces";
    let mut walk = mirror.revwalk().map_err(|e| local(ctx, e))?;
    walk.push(tip).map_err(|e| local(ctx, e))?;
    if let Some(h) = forward {
        walk.hide(h).map_err(|e| local(ctx, e))?;
    }
    let mut pb = mirror.packbuilder().map_err(|e| local(ctx, e))?;
    pb.set_threads(0);
    pb.insert_walk(&mut walk).map_err(|e| local(ctx, e))?;
    pb.write(&target, 0).map_err(|e| local(ctx, e))?;
    write_text(&target.join("base"), base);
    if forward.is_none() {
        if seed.exists() {
            fs::remove_dir_all(&seed).map_err(io("replacing a seed", &seed))?;
        }
        fs::rename(&target, &seed).map_err(io("replacing a seed", &seed))?;
    }
    // Last: a seed is used only once its packs are complete.
    write_text(&seed.join("tip"), &tip.to_string());
    tracing::debug!(base, %tip, rebuilt = forward.is_none(), "workspace seed updated");
    Ok(())
}
