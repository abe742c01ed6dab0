//! The `rng` and `stats` modules: the PRNG is SplitMix64 exactly (reference values), its
//! derived draws stay in range and are roughly uniform, and stats land as JSON files.

use fsqlite_testkit::rng::{Rng, parse_seed, replay_hint};
use fsqlite_testkit::serde_json::{self, json};
use fsqlite_testkit::stats::{STATS_DIR, stats_dir, target_dir, write_stats, write_stats_in};

#[test]
fn splitmix64_reference_stream() {
    // SplitMix64 from seed 0 (the published reference outputs).
    let mut r = Rng::new(0);
    assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
    assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    let mut a = Rng::new(0x1234);
    let mut b = a.clone();
    let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
    assert_eq!(xs, ys);
    let mut f1 = Rng::new(5).fork();
    let mut f2 = Rng::new(5).fork();
    assert_eq!(f1.next_u64(), f2.next_u64());
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
}

#[test]
fn derived_draws_are_in_range_and_roughly_uniform() {
    let mut r = Rng::new(99);
    assert_eq!(r.below(0), 0);
    assert_eq!(r.below(1), 0);
    let mut buckets = [0u32; 10];
    for _ in 0..20_000 {
        buckets[r.below(10) as usize] += 1;
    }
    for (i, &n) in buckets.iter().enumerate() {
        assert!((1_700..=2_300).contains(&n), "bucket {i}: {n} of 20000");
    }
    for _ in 0..1000 {
        let x = r.range(100, 105);
        assert!((100..105).contains(&x));
        assert!(r.below(u64::MAX) < u64::MAX);
    }
    assert_eq!(r.range(7, 7), 7);
    assert!((0..1000).all(|_| !r.chance(0.0)));
    assert!((0..1000).all(|_| r.chance(1.0)));
    let hits = (0..20_000).filter(|_| r.chance(0.25)).count();
    assert!((4_500..=5_500).contains(&hits), "{hits}");

    let mut buf1 = [0u8; 13];
    let mut buf2 = [0u8; 13];
    Rng::new(3).fill(&mut buf1);
    Rng::new(3).fill(&mut buf2);
    assert_eq!(buf1, buf2);
    assert_eq!(&buf1[..8], &Rng::new(3).next_u64().to_le_bytes());
    assert!(buf1.iter().any(|&b| b != 0));
}

#[test]
fn seeds_parse_and_the_replay_hint_names_them() {
    assert_eq!(parse_seed("0x00ff"), Some(255));
    assert_eq!(parse_seed("0XFF"), Some(255));
    assert_eq!(parse_seed(" 1_000 "), Some(1000));
    assert_eq!(parse_seed("0xfeed_face"), Some(0xfeed_face));
    assert_eq!(parse_seed("nope"), None);
    let hint = replay_hint(0xab, "kill9_writer");
    assert!(
        hint.starts_with("replay: FSQLITE_SEED=0x00000000000000ab cargo test -p "),
        "{hint}"
    );
    assert!(hint.ends_with(" kill9_writer"), "{hint}");
    if let Ok(pkg) = std::env::var("CARGO_PKG_NAME") {
        assert!(hint.contains(&format!("-p {pkg} ")), "{hint}");
    }
}

#[test]
fn stats_are_written_as_json_under_the_target_dir() {
    let value = json!({"crash_points": 12, "lost_acks": 0, "by_kind": {"torn": 3}});
    let path = write_stats("testkit-selftest", value.clone()).unwrap();
    assert_eq!(path, stats_dir().join("testkit-selftest.json"));
    assert_eq!(stats_dir(), target_dir().join(STATS_DIR));
    assert!(
        target_dir().join("CACHEDIR.TAG").is_file()
            || std::env::var_os("CARGO_TARGET_DIR").is_some(),
        "{}",
        target_dir().display()
    );
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, value);

    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let p = write_stats_in(&nested, "x.y-z_1", &json!([1, 2])).unwrap();
    assert_eq!(p, nested.join("x.y-z_1.json"));
    assert_eq!(
        std::fs::read_to_string(&p).unwrap().trim(),
        "[\n  1,\n  2\n]"
    );
    for bad in ["", "../escape", "a/b", ".hidden", "sp ace"] {
        assert!(
            write_stats_in(dir.path(), bad, &json!(1)).is_err(),
            "{bad:?}"
        );
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&nested)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
