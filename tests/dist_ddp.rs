//! PyTorch DDP's reducer (c10d::Reducer) over flowzoo's process group, 2 loopback ranks:
//! gradients averaged during backward, and a clear error when a rank is gone.
mod dist_support;
use dist_support::*;
use flowzoo::dist::{DdpOptions, DdpReducer};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A small model whose weights depend only on the seed, and a rank-dependent loss.
fn tiny_net(vs: &tch::nn::VarStore) -> impl Fn(&Tensor) -> Tensor {
    use tch::nn::{self, Module};
    let root = vs.root();
    let seq = nn::seq()
        .add(nn::linear(&root / "a", 6, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "b", 32, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "c", 32, 3, Default::default()));
    move |x: &Tensor| seq.forward(x).square().mean(Kind::Float)
}

fn input_of(rank: usize, step: usize) -> Tensor {
    Tensor::arange(8 * 6, (Kind::Float, Device::Cpu)).view([8, 6]).cos() * (1.0 + rank as f64 + 0.5 * step as f64)
}

fn sorted_params(vs: &tch::nn::VarStore) -> Vec<Tensor> {
    let mut named = vs.variables().into_iter().collect::<Vec<_>>();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

#[test]
fn ddp_reducer_averages_gradients_during_backward() {
    if let Some(pg) = child_group() {
        for as_view in [false, true] {
            tch::manual_seed(3);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let loss_of = tiny_net(&vs);
            let params = sorted_params(&vs);
            // Every rank computes both ranks' gradients alone first (no reducer yet).
            let mut expected: Vec<Vec<Tensor>> = Vec::new();
            let mut own_first: Vec<Tensor> = Vec::new();
            for step in 0..2 {
                let mut sum: Option<Vec<Tensor>> = None;
                for r in 0..2 {
                    zero_grads(&params);
                    loss_of(&input_of(r, step)).backward();
                    let g: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
                    if r == pg.rank() && step == 0 {
                        own_first = g.iter().map(|t| t.copy()).collect();
                    }
                    sum = Some(match sum {
                        None => g,
                        Some(s) => s.iter().zip(&g).map(|(a, b)| a + b).collect(),
                    });
                }
                expected.push(sum.unwrap().iter().map(|s| s * 0.5).collect());
            }
            zero_grads(&params);
            let opts = DdpOptions { bucket_bytes: 1024, first_bucket_bytes: 256, gradient_as_bucket_view: as_view };
            let reducer = DdpReducer::new(&pg, &params, opts).unwrap();
            assert!(reducer.bucket_count() >= 3, "{}", reducer.bucket_count());
            for (step, want) in expected.iter().enumerate() {
                zero_grads(&params);
                let loss = loss_of(&input_of(pg.rank(), step));
                if as_view {
                    reducer.backward(&loss).unwrap();
                } else {
                    reducer.prepare_for_backward(&loss).unwrap();
                    loss.backward();
                }
                for (i, (p, w)) in params.iter().zip(want).enumerate() {
                    let got = p.grad();
                    let diff = (&got - w).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "parameter {i}, step {step}, as_view {as_view}: off by {diff}");
                }
            }
            // An unprepared backward is left alone (this rank's own gradients).
            zero_grads(&params);
            loss_of(&input_of(pg.rank(), 0)).backward();
            for (i, (p, own)) in params.iter().zip(&own_first).enumerate() {
                assert!(p.grad().allclose(own, 1e-6, 1e-7, false), "parameter {i}: an unprepared backward was all-reduced");
            }
            pg.barrier().unwrap();
        }
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    assert_all_ok(&run_ranks("ddp_reducer_averages_gradients_during_backward", 2, 2, &[]));
}

#[test]
fn ddp_backward_fails_clearly_when_a_rank_exits() {
    if let Some(pg) = child_group() {
        tch::manual_seed(3);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let loss_of = tiny_net(&vs);
        let params = sorted_params(&vs);
        let reducer = DdpReducer::new(&pg, &params, DdpOptions::default()).unwrap();
        if pg.rank() == 1 {
            std::process::exit(0);
        }
        let err = reducer.backward(&loss_of(&input_of(0, 0))).unwrap_err();
        println!("FZ-ERROR: {err:#}");
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("4000");
    let t0 = Instant::now();
    let outs = run_ranks("ddp_backward_fails_clearly_when_a_rank_exits", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    // The 4 s timeout bounds the wait; the rest is two process start-ups on a possibly busy machine.
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    let out = text(&outs[0]);
    // Gloo sees the exit either as a closed connection or, when the peer's socket lingers, as
    // the receive timing out: both must reach the caller as the same named error.
    assert!(
        out.contains("FZ-ERROR: backward with DDP's gradient all-reduce failed on rank 0 of 2")
            && (out.contains("Connection closed by peer") || out.contains("Timed out waiting 4000ms")),
        "{out}"
    );
}

