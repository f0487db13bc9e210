//! A proxy-wasm HTTP filter that does nothing: a root context and an HTTP context whose
//! callbacks return `Continue`. Loaded by `make bench` as variant (b), it measures what any v8
//! wasm filter costs Envoy per request (VM entry, context creation, callbacks), so the canary
//! filter's own cost is the difference from it.

#[cfg(target_os = "wasi")]
mod noop {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
    }}

    struct NoopRoot;

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(NoopRequest))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct NoopRequest;

    impl Context for NoopRequest {}

    impl HttpContext for NoopRequest {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }

        fn on_http_response_headers(
            &mut self,
            _num_headers: usize,
            _end_of_stream: bool,
        ) -> Action {
            Action::Continue
        }
    }
}
