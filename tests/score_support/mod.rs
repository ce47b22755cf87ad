//! Shared by the score tests: two sets of score statistics describe the same weights and
//! agree in every number (to float32 rounding of the stored quantiles, so that a changed
//! reduction order in libtorch cannot fail a check that is about what was measured).
use flowzoo::score::ScoreStats;

pub fn assert_same_stats(a: &ScoreStats, b: &ScoreStats) {
    assert_eq!(
        (&a.unit, &a.checkpoint, a.weights_step, &a.weights_checksum, a.draws, a.seed, &a.heldout_split),
        (&b.unit, &b.checkpoint, b.weights_step, &b.weights_checksum, b.draws, b.seed, &b.heldout_split),
        "what the statistics describe"
    );
    for (split, x, y) in [("train", &a.train, &b.train), ("heldout", &a.heldout, &b.heldout)] {
        assert_eq!(x.n, y.n, "{split}: inputs");
        assert_eq!(x.scores.keys().collect::<Vec<_>>(), y.scores.keys().collect::<Vec<_>>(), "{split}: score kinds");
        for (kind, s) in &x.scores {
            let t = &y.scores[kind];
            let close = |u: f64, v: f64| (u - v).abs() <= 1e-6 * (1.0 + u.abs().max(v.abs()));
            assert!(close(s.mean, t.mean) && close(s.std, t.std), "{split}.{kind}: mean {} vs {}, std {} vs {}", s.mean, t.mean, s.std, t.std);
            let worst = s.quantiles.iter().zip(&t.quantiles).map(|(u, v)| (u - v).abs() / (1.0 + u.abs().max(v.abs()))).fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "{split}.{kind}: quantiles differ by up to {worst} (relative)");
        }
    }
}
