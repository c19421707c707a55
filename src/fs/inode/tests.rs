//! Tests of the inode table: answers older than a change made here are not recorded.

use super::*;

fn file(size: u64, etag: &str) -> Entry {
    Entry {
        kind: Kind::File,
        size,
        mtime: SystemTime::UNIX_EPOCH,
        etag: Some(etag.into()),
        posix: None,
        source: None,
    }
}

#[test]
fn an_answer_older_than_a_change_here_is_not_recorded() {
    let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
    let asked = inodes.clock();
    inodes.record("d/f", file(2, "new")); // published while the provider was being asked
    assert!(inodes.observed("d/f", file(1, "old"), asked).is_none());
    assert!(matches!(
        inodes.record_listed("d/f", file(1, "old"), asked),
        Answer::Stale(_)
    ));
    assert!(!inodes.observed_gone("d/f", asked, || panic!("filled")));
    assert!(!inodes.if_unchanged("d", asked, || panic!("filled"))); // the parent's listing changed too
    assert_eq!(inodes.find("d/f").unwrap().1.etag.as_deref(), Some("new"));
    // Asked after the change: recorded.
    let asked = inodes.clock();
    let (_, shown) = inodes.observed("d/f", file(3, "newer"), asked).unwrap();
    assert_eq!(shown.size, 3);
    assert!(inodes.if_unchanged("d", asked, || {}));
    // Other paths are not held back by a change of d/f.
    let asked_before = Asked(asked.0 - 1);
    assert!(inodes.observed("e/g", file(1, "x"), asked_before).is_some());
}

#[test]
fn unlink_and_renames_make_older_answers_stale() {
    let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
    inodes.record("a/f", file(1, "1"));
    inodes.record("a", Entry::dir(SystemTime::UNIX_EPOCH));
    let asked = inodes.clock();
    inodes.unlink("a/f");
    assert!(inodes.observed("a/f", file(1, "1"), asked).is_none());
    assert!(inodes.find("a/f").is_none(), "an unlinked name stays gone");

    inodes.record("a/g", file(1, "1"));
    let asked = inodes.clock();
    inodes.rename("a/g", "b/g"); // a file: both names change, nothing else
    assert!(inodes.observed("a/g", file(1, "1"), asked).is_none());
    assert!(inodes.observed("b/g", file(1, "1"), asked).is_none());
    assert!(inodes.observed("c/h", file(1, "1"), asked).is_some());

    let asked = inodes.clock();
    inodes.rename("a", "z"); // a directory: names below it move, seen here or not
    assert!(inodes.observed("c/h", file(1, "1"), asked).is_none());
    assert!(inodes
        .observed("a/never/seen", file(1, "1"), asked)
        .is_none());
}

#[test]
fn pruned_changes_make_every_older_answer_stale() {
    let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
    let asked = inodes.clock();
    inodes.mark("x");
    {
        let mut t = inodes.inner.lock().unwrap();
        let old = Instant::now() - CHANGES_KEPT - std::time::Duration::from_secs(1);
        for (_, at) in t.changes.values_mut() {
            *at = old;
        }
        for i in 0..=CHANGES_PRUNED_PAST {
            t.mark(&format!("p{i}"));
        }
        assert!(!t.changes.contains_key("x"), "pruned");
    }
    assert!(inodes.observed("y", file(1, "1"), asked).is_none());
    assert!(inodes.observed("y", file(1, "1"), inodes.clock()).is_some());
}
