//! Distributed engine faults (c10d over Gloo, loopback): a rank that exits, one that stops
//! answering, one that never arrives. Each gives the others a clear error within the timeout,
//! never a hang or a panic.
mod dist_support;
use dist_support::*;
use flowzoo::dist::{DistEnv, DistOptions, GlooDevice, ProcessGroup};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[test]
fn rank_that_exits_early_makes_the_other_fail_clearly() {
    if let Some(pg) = child_group() {
        if pg.rank() == 1 {
            std::process::exit(0);
        }
        let t0 = Instant::now();
        let err = pg.all_reduce_mean(&[Tensor::ones([1000], (Kind::Float, Device::Cpu))]).unwrap_err();
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("4000");
    let t0 = Instant::now();
    let outs = run_ranks("rank_that_exits_early_makes_the_other_fail_clearly", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("all-reduce of tensor 0 failed on rank 0 of 2"), "{out}");
}

#[test]
fn rank_that_stops_answering_times_out() {
    if let Some(pg) = child_group() {
        if pg.rank() == 1 {
            // Alive but silent: never joins the collective, exits after rank 0 gave up.
            std::thread::sleep(Duration::from_secs(4));
            std::process::exit(0);
        }
        let t0 = Instant::now();
        let err = pg.barrier().unwrap_err();
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let [(k, v)] = child_timeout_env("1500");
    let outs = run_ranks("rank_that_stops_answering_times_out", 2, 2, &[(k, &v)]);
    assert_all_ok(&outs);
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("barrier failed on rank 0 of 2"), "{out}");
    let secs = seconds_to_error(&out);
    assert!((1.0..5.5).contains(&secs), "gave up after {secs} s with a 1.5 s timeout:\n{out}");
}

#[test]
fn rank_that_never_arrives_fails_rendezvous() {
    if std::env::var(CHILD).is_ok() {
        let env = DistEnv::from_env().unwrap().unwrap();
        let opts = DistOptions { timeout: Duration::from_millis(1500), gloo_device: Some(GlooDevice::Hostname("127.0.0.1".into())), ..DistOptions::default() };
        let t0 = Instant::now();
        let err = ProcessGroup::connect(&env, &opts).err().expect("rank 1 never comes");
        println!("FZ-ERROR after {:.2} s: {err:#}", t0.elapsed().as_secs_f64());
        return;
    }
    if unsupported_build_says_so() {
        return;
    }
    let outs = run_ranks("rank_that_never_arrives_fails_rendezvous", 2, 1, &[]);
    assert_all_ok(&outs);
    let out = text(&outs[0]);
    assert!(out.contains("FZ-ERROR") && out.contains("as rank 0 of 2"), "{out}");
    let secs = seconds_to_error(&out);
    assert!(secs < 6.0, "gave up after {secs} s with a 1.5 s timeout:\n{out}");
}

