//! The wasm-canary proxy-wasm filter: a thin layer that turns Envoy host calls into the pure
//! decisions of [`canary_core`]. Built for `wasm32-wasip1` (see `make wasm`); on other targets
//! this crate is empty so the workspace builds and tests natively.

#[cfg(target_os = "wasi")]
mod plugin;
