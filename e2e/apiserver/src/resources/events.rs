//! `events.k8s.io/v1` Events are the core `v1` Events seen through another schema:
//! one stored object, renamed fields. These are the two directions of that view.

use serde_json::{Map, Value};

/// (core field, events.k8s.io/v1 field)
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, api_version: &str, from_core: bool) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from("Event"));
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            let renamed = RENAMES.iter().find_map(|(core, v1)| {
                if from_core {
                    (k == core).then_some(*v1)
                } else {
                    (k == v1).then_some(*core)
                }
            });
            out.insert(renamed.unwrap_or(k).to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// A stored core Event as `events.k8s.io/v1`.
pub fn to_events_v1(core: &Value) -> Value {
    rename(core, "events.k8s.io/v1", true)
}

/// An `events.k8s.io/v1` Event as the core Event to store.
pub fn from_events_v1(ev: &Value) -> Value {
    let mut core = rename(ev, "v1", false);
    // Core Events carry a source; kube-apiserver fills it from the reporting controller.
    if let (Some(map), Some(component)) = (
        core.as_object_mut(),
        ev.get("reportingController")
            .and_then(Value::as_str)
            .map(str::to_string),
    ) {
        map.entry("source")
            .or_insert_with(|| serde_json::json!({"component": component}));
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_schemas() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
            "type": "Normal", "reportingController": "ctl", "reportingInstance": "ctl-1",
            "eventTime": "2024-01-01T00:00:00.000000Z", "action": "Start"
        });
        let core = from_events_v1(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "ctl");
        assert_eq!(core["source"]["component"], "ctl");
        let back = to_events_v1(&core);
        assert_eq!(back["regarding"], v1["regarding"]);
        assert_eq!(back["note"], "hello");
        assert_eq!(back["deprecatedSource"]["component"], "ctl");
    }
}
