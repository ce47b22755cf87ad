//! The c10d handles of a build without distributed support (`cfg(flowzoo_dist)` off: no
//! Gloo headers at build time). They mirror `crate::ffi::dist` so that the rest of
//! `crate::dist` has a single code path: the constructors fail with [`super::no_support_message`],
//! and no handle can ever exist ([`Infallible`]), so every other method is unreachable by type.
use anyhow::{anyhow, Result};
use std::convert::Infallible;
use std::time::Duration;
use tch::Tensor;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlooDevice {
    Default,
    Hostname(String),
    Interface(String),
}

pub struct Store(Infallible);
pub struct Backend(Infallible);
pub struct Work(Infallible);
pub struct Reducer(Infallible);

pub use crate::ffi::ReducerLayout;

impl Reducer {
    pub fn new(store: &Store, _b: &Backend, _r: usize, _s: usize, _nccl: bool, _p: &[Tensor], _l: ReducerLayout) -> Result<(Reducer, usize)> {
        match store.0 {}
    }
    pub fn prepare_for_backward(&self, _loss: &Tensor) -> Result<()> {
        match self.0 {}
    }
    pub fn last_timing(&self) -> Result<(Option<i64>, Option<i64>)> {
        match self.0 {}
    }
}

impl Store {
    pub fn tcp(_host: &str, _port: u16, _world_size: usize, _is_server: bool, _timeout: Duration) -> Result<Store> {
        Err(anyhow!(super::no_support_message()))
    }
    pub fn prefixed(&self, _prefix: &str) -> Result<Store> {
        match self.0 {}
    }
}

impl Backend {
    pub fn gloo(_store: &Store, _rank: usize, _size: usize, _device: &GlooDevice, _timeout: Duration, _threads: usize) -> Result<Backend> {
        Err(anyhow!(super::no_support_message()))
    }
    pub fn all_reduce_sum(&self, _t: &Tensor) -> Result<Work> {
        match self.0 {}
    }
    pub fn all_reduce_coalesced_sum(&self, _ts: &[Tensor]) -> Result<Work> {
        match self.0 {}
    }
    pub fn broadcast(&self, _t: &Tensor, _root: usize) -> Result<Work> {
        match self.0 {}
    }
    pub fn barrier(&self) -> Result<Work> {
        match self.0 {}
    }
    pub fn all_gather(&self, _input: &Tensor, _outputs: &[Tensor]) -> Result<Work> {
        match self.0 {}
    }
}

impl Work {
    pub fn wait(self) -> Result<()> {
        match self.0 {}
    }
}
