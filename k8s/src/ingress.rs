//! Ingress classes: the names of skiff's built-in class and controller, the annotations
//! Kubernetes defines for classes, and which Ingresses skiff's proxy serves. The agents'
//! proxy routes by this rule and the control plane's status writer reports by it, so both
//! always agree.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The IngressClass skiff-control creates and marks default.
pub const SKIFF_CLASS: &str = "skiff";
/// The controller name of skiff's built-in Ingress proxy (an IngressClass's `spec.controller`).
pub const SKIFF_CONTROLLER: &str = "skiff.dev/ingress";
/// The annotation that makes a class the default (`networkingv1.AnnotationIsDefaultIngressClass`).
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The deprecated class annotation that predates `spec.ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The Node annotation an agent sets while its Ingress proxy listens (`http=80,https=443`, the
/// ports it serves) and removes when it stops.
pub const LISTENING_ANNOTATION: &str = "ingress.skiff.dev/listening";

/// Whether an IngressClass is marked default.
pub fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .map(String::as_str)
        == Some("true")
}

/// The class an Ingress names: `spec.ingressClassName`, else the deprecated annotation.
pub fn class_name(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLASS_ANNOTATION))
                .map(String::as_str)
        })
}

/// Whether `ingress` is for skiff's proxy: the class it names has skiff's controller, or it
/// names none and one of skiff's classes is the default (an Ingress created before any
/// default class existed, which admission could not give one).
pub fn is_skiffs(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let mut skiffs = classes.iter().filter(|c| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(SKIFF_CONTROLLER)
    });
    match class_name(ingress) {
        Some(name) => skiffs.any(|c| c.metadata.name.as_deref() == Some(name)),
        None => skiffs.any(|c| is_default(c)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        let annotations = if default {
            json!({DEFAULT_CLASS_ANNOTATION: "true"})
        } else {
            json!({})
        };
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "annotations": annotations},
                "spec": {"controller": controller}}),
            )
            .unwrap(),
        )
    }

    fn ingress(spec: serde_json::Value, annotations: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({"metadata": {"name": "i", "namespace": "d",
            "annotations": annotations}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn skiffs_ingresses_are_those_of_its_classes() {
        let classes = [
            class("skiff", SKIFF_CONTROLLER, true),
            class("nginx", "k8s.io/ingress-nginx", false),
        ];
        let named = |n: &str| ingress(json!({"ingressClassName": n}), json!({}));
        assert!(is_skiffs(&named("skiff"), &classes));
        assert!(!is_skiffs(&named("nginx"), &classes));
        assert!(!is_skiffs(&named("gone"), &classes));
        assert!(is_skiffs(
            &ingress(json!({}), json!({CLASS_ANNOTATION: "skiff"})),
            &classes
        ));
        assert!(is_skiffs(&ingress(json!({}), json!({})), &classes));
        let not_default = [class("skiff", SKIFF_CONTROLLER, false)];
        assert!(!is_skiffs(&ingress(json!({}), json!({})), &not_default));
        let other_default = [
            class("skiff", SKIFF_CONTROLLER, false),
            class("nginx", "k8s.io/ingress-nginx", true),
        ];
        assert!(!is_skiffs(&ingress(json!({}), json!({})), &other_default));
    }
}
