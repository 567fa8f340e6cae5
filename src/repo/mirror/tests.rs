use super::*;

/// A fake mirror: `bytes` of data, last used at `used`.
fn fake(root: &Path, name: &str, bytes: usize, used: u64) -> PathBuf {
    let dir = root.join(format!("{name}.git"));
    fs::create_dir_all(dir.join("objects/pack")).unwrap();
    fs::write(dir.join("objects/pack/p.pack"), vec![0u8; bytes]).unwrap();
    write_stamp(&dir.join(USED_FILE), used);
    dir
}

#[test]
fn mirror_names_are_readable_distinct_and_path_safe() {
    let a = mirror_name("https://github.com/acme/widgets.git");
    assert!(a.starts_with("github_com_acme_widgets-"), "{a}");
    assert_ne!(a, mirror_name("https://github.com/acme/widgets"));
    assert_ne!(a, mirror_name("https://ghe.example/acme/widgets.git"));
    let odd = mirror_name("http://h/../../etc/x y.git");
    assert!(!odd.contains('/') && !odd.contains(".."), "{odd}");
    assert!(mirror_name(&format!("http://h/{}", "a".repeat(500))).len() < 100);
}

#[test]
fn eviction_removes_least_recently_used_until_under_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let old = fake(root, "old", 1000, 1);
    let mid = fake(root, "mid", 1000, 2);
    let new = fake(root, "new", 1000, 3);
    let cache = MirrorCache::new(root, 2100);
    let removed = cache.evict(&new).unwrap();
    assert_eq!(removed, vec![old.clone()]);
    assert!(!old.exists() && mid.exists() && new.exists());
    assert!(cache.size() <= 2100);

    // The mirror in use is never evicted, even when it is the oldest.
    let cache = MirrorCache::new(root, 500);
    let removed = cache.evict(&mid).unwrap();
    assert_eq!(removed, vec![new.clone()]);
    assert!(mid.exists());
}

#[test]
fn eviction_skips_a_mirror_another_job_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let held = fake(root, "held", 1000, 1);
    let free = fake(root, "free", 1000, 2);
    let keep = fake(root, "keep", 1000, 3);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(held.with_extension("lock"))
        .unwrap();
    flock(&lock, libc::LOCK_SH).unwrap();
    let removed = MirrorCache::new(root, 1500).evict(&keep).unwrap();
    assert_eq!(removed, vec![free.clone()]);
    assert!(held.exists() && keep.exists());
    flock(&lock, libc::LOCK_UN).unwrap();
    let removed = MirrorCache::new(root, 1500).evict(&keep).unwrap();
    assert_eq!(removed, vec![held]);
}

#[test]
fn stamps_read_back_and_default_to_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("s");
    assert_eq!(read_stamp(&p), 0);
    write_stamp(&p, 42);
    assert_eq!(read_stamp(&p), 42);
    fs::write(&p, "garbage").unwrap();
    assert_eq!(read_stamp(&p), 0);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}
