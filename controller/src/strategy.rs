//! What the step engine runs: a canary strategy as written, or the canary steps a blue-green
//! strategy amounts to. One engine runs both, so a blue-green rollout gets the canary's
//! guarantees as they are (no traffic to pods that are not Ready, abort always wins, state in
//! the status, promote requests acted on once).
//!
//! A blue-green strategy becomes, in order:
//! 1. `setHeaderRoute preview` (its `previewHeaderRoute`), once green's preview pods are Ready;
//! 2. an analysis step running `prePromotionAnalysis`;
//! 3. a pause: until promoted (`autoPromotionEnabled: false`), or `autoPromotionSeconds`;
//! 4. `setWeight 100`: the switch, every caller at once, once green has all its pods;
//! 5. an analysis step running `postPromotionAnalysis`, blue still up: a failure aborts, which
//!    switches every caller back to blue;
//! 6. promotion: the DestinationRule's stable subset moves to green; blue is scaled down after
//!    `scaleDownDelaySeconds`.

use std::borrow::Cow;

use crate::crd::{
    BlueGreenStrategy, CanaryStep, CanaryStrategy, PauseStep, RolloutStrategy, SetHeaderRoute,
    WasmTrafficRouting,
};

/// The name of the header route to green.
pub const PREVIEW_ROUTE: &str = "preview";

/// What a compiled blue-green step is, for messages and `kubectl canary status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlueGreenStep {
    /// `setHeaderRoute preview`.
    Preview,
    /// The analysis step running `prePromotionAnalysis`.
    PrePromotionAnalysis,
    /// The pause before the switch.
    AutoPromotion,
    /// `setWeight 100`.
    Switch,
    /// The analysis step running `postPromotionAnalysis`.
    PostPromotionAnalysis,
}

impl BlueGreenStep {
    /// The spec field the step comes from.
    pub fn path(self) -> &'static str {
        match self {
            Self::Preview => "spec.strategy.blueGreen.previewHeaderRoute",
            Self::PrePromotionAnalysis => "spec.strategy.blueGreen.prePromotionAnalysis",
            Self::AutoPromotion => "spec.strategy.blueGreen.autoPromotionSeconds",
            Self::Switch => "spec.strategy.blueGreen (the switch)",
            Self::PostPromotionAnalysis => "spec.strategy.blueGreen.postPromotionAnalysis",
        }
    }

    /// A short name for the step.
    pub fn label(self) -> &'static str {
        match self {
            Self::Preview => "preview",
            Self::PrePromotionAnalysis => "pre-promotion analysis",
            Self::AutoPromotion => "auto-promotion",
            Self::Switch => "switch",
            Self::PostPromotionAnalysis => "post-promotion analysis",
        }
    }
}

/// The canary steps of a blue-green strategy, and what each one is.
pub fn compile(bg: &BlueGreenStrategy) -> (CanaryStrategy, Vec<BlueGreenStep>) {
    let mut steps = Vec::new();
    let mut kinds = Vec::new();
    if let Some(route) = &bg.preview_header_route {
        steps.push(CanaryStep {
            set_header_route: Some(SetHeaderRoute {
                name: PREVIEW_ROUTE.into(),
                matches: route.matches.clone(),
            }),
            ..CanaryStep::default()
        });
        kinds.push(BlueGreenStep::Preview);
    }
    if let Some(a) = &bg.pre_promotion_analysis {
        steps.push(CanaryStep {
            analysis: Some(a.clone()),
            ..CanaryStep::default()
        });
        kinds.push(BlueGreenStep::PrePromotionAnalysis);
    }
    let pause = match (bg.auto_promotion_enabled, bg.auto_promotion_seconds) {
        (Some(false), _) => Some(PauseStep { duration: None }),
        (_, Some(s)) if s > 0 => Some(PauseStep {
            duration: Some(serde_json::Value::from(s)),
        }),
        _ => None,
    };
    if let Some(pause) = pause {
        steps.push(CanaryStep {
            pause: Some(pause),
            ..CanaryStep::default()
        });
        kinds.push(BlueGreenStep::AutoPromotion);
    }
    steps.push(CanaryStep {
        set_weight: Some(100.0),
        ..CanaryStep::default()
    });
    kinds.push(BlueGreenStep::Switch);
    if let Some(a) = &bg.post_promotion_analysis {
        steps.push(CanaryStep {
            analysis: Some(a.clone()),
            ..CanaryStep::default()
        });
        kinds.push(BlueGreenStep::PostPromotionAnalysis);
    }
    let mut traffic_routing = bg.traffic_routing.clone();
    if traffic_routing.wasm.service.is_empty() {
        traffic_routing.wasm.service.clone_from(&bg.active_service);
    }
    let canary = CanaryStrategy {
        steps,
        canary_metadata: bg.preview_metadata.clone(),
        stable_metadata: bg.active_metadata.clone(),
        scale_down_delay_seconds: bg.scale_down_delay_seconds,
        abort_scale_down_delay_seconds: bg.abort_scale_down_delay_seconds,
        analysis: None,
        traffic_routing,
    };
    (canary, kinds)
}

impl RolloutStrategy {
    /// The blue-green strategy, when it is the one that runs (not beside a canary one, which
    /// validation refuses).
    pub fn blue_green_only(&self) -> Option<&BlueGreenStrategy> {
        self.blue_green.as_ref().filter(|_| self.canary.is_none())
    }

    /// The canary strategy the step engine runs (see the module documentation), and for a
    /// blue-green rollout what each of its steps is (empty for a canary). With neither strategy
    /// set (which validation reports), an empty one.
    pub fn compiled(&self) -> (Cow<'_, CanaryStrategy>, Vec<BlueGreenStep>) {
        match (&self.canary, &self.blue_green) {
            (Some(canary), _) => (Cow::Borrowed(canary), Vec::new()),
            (None, Some(bg)) => {
                let (canary, kinds) = compile(bg);
                (Cow::Owned(canary), kinds)
            }
            (None, None) => (Cow::Owned(CanaryStrategy::default()), Vec::new()),
        }
    }

    /// The canary strategy the step engine runs ([`RolloutStrategy::compiled`]).
    pub fn effective(&self) -> Cow<'_, CanaryStrategy> {
        self.compiled().0
    }

    /// Where step `index` is written in the spec, for messages: `steps[i]`, or the blue-green
    /// field it comes from (`kinds`: the second half of [`RolloutStrategy::compiled`]).
    pub fn step_path(kinds: &[BlueGreenStep], index: usize) -> String {
        kinds
            .get(index)
            .map_or_else(|| format!("steps[{index}]"), |s| s.path().to_owned())
    }

    /// The traffic routing as written (for a blue-green rollout `service` may be empty: use
    /// [`RolloutStrategy::service`]). An empty one when neither strategy is set.
    pub fn routing(&self) -> &WasmTrafficRouting {
        static NONE: std::sync::OnceLock<WasmTrafficRouting> = std::sync::OnceLock::new();
        match (&self.canary, &self.blue_green) {
            (Some(canary), _) => &canary.traffic_routing.wasm,
            (None, Some(bg)) => &bg.traffic_routing.wasm,
            (None, None) => NONE.get_or_init(WasmTrafficRouting::default),
        }
    }

    /// The Service under rollout.
    pub fn service(&self) -> Cow<'_, str> {
        match (&self.canary, &self.blue_green) {
            (Some(canary), _) => Cow::Borrowed(&canary.traffic_routing.wasm.service),
            (None, Some(bg)) if bg.traffic_routing.wasm.service.is_empty() => {
                Cow::Borrowed(&bg.active_service)
            }
            (None, Some(bg)) => Cow::Borrowed(&bg.traffic_routing.wasm.service),
            (None, None) => Cow::Borrowed(""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{HeaderRouteMatch, StringMatchSpec};

    fn blue_green(extra: serde_json::Value) -> BlueGreenStrategy {
        let mut v = serde_json::json!({
            "activeService": "reviews",
            "trafficRouting": {"wasm": {
                "wasmPlugin": {"url": "oci://r/f:1"},
                "destinationRule": {"name": "reviews"}
            }}
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn argos_default_blue_green_switches_at_once_and_promotes() {
        let (c, kinds) = compile(&blue_green(serde_json::json!({})));
        assert_eq!(kinds, vec![BlueGreenStep::Switch]);
        assert_eq!(c.steps[0].set_weight, Some(100.0));
        assert_eq!(c.traffic_routing.wasm.service, "reviews");
    }

    #[test]
    fn every_field_becomes_its_step_in_argos_order() {
        let analysis = serde_json::json!({"templates": [{"templateName": "ok"}]});
        let (c, kinds) = compile(&blue_green(serde_json::json!({
            "previewHeaderRoute": {"match": [{"headerName": "x-preview", "headerValue": {"exact": "1"}}]},
            "prePromotionAnalysis": analysis,
            "autoPromotionSeconds": 20,
            "postPromotionAnalysis": analysis,
            "scaleDownDelaySeconds": 5
        })));
        assert_eq!(
            kinds,
            vec![
                BlueGreenStep::Preview,
                BlueGreenStep::PrePromotionAnalysis,
                BlueGreenStep::AutoPromotion,
                BlueGreenStep::Switch,
                BlueGreenStep::PostPromotionAnalysis
            ]
        );
        let route = c.steps[0].set_header_route.clone().unwrap_or_default();
        assert_eq!(route.name, PREVIEW_ROUTE);
        assert_eq!(
            route.matches,
            vec![HeaderRouteMatch {
                header_name: "x-preview".into(),
                header_value: StringMatchSpec {
                    exact: Some("1".into()),
                    ..StringMatchSpec::default()
                }
            }]
        );
        assert_eq!(
            c.steps[2].pause.clone().unwrap_or_default().duration,
            Some(serde_json::json!(20))
        );
        assert_eq!(c.scale_down_delay_seconds, Some(5));
    }

    #[test]
    fn without_auto_promotion_it_waits_for_a_promote_whatever_the_seconds() {
        let (c, kinds) = compile(&blue_green(
            serde_json::json!({"autoPromotionEnabled": false}),
        ));
        assert_eq!(
            kinds,
            vec![BlueGreenStep::AutoPromotion, BlueGreenStep::Switch]
        );
        assert_eq!(c.steps[0].pause, Some(PauseStep { duration: None }));
    }
}
