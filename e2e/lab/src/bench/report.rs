//! The benchmark's one report: rows grouped in sections, printed as a
//! Markdown table (what `docs/performance.md` holds) or as JSON.

use serde::Serialize;
use serde_json::json;

use super::Params;

/// One measured value.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    /// The target (`<= 10`, `>= 5000`), empty when there is none.
    pub target: &'static str,
    pub met: Option<bool>,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cores: usize,
    pub params: Params,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn new(params: Params) -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            params,
            rows: Vec::new(),
        }
    }

    /// A row without a target.
    pub fn add(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.rows.push(Row {
            section,
            metric: metric.into(),
            value,
            unit,
            target: "",
            met: None,
        });
    }

    /// A row with a target: `at_most` (value <= bound) or at least.
    pub fn add_target(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: &'static str,
    ) {
        let met = parse_target(target).map(|(at_most, bound)| {
            if at_most {
                value <= bound
            } else {
                value >= bound
            }
        });
        self.rows.push(Row {
            section,
            metric: metric.into(),
            value,
            unit,
            target,
            met,
        });
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({"machine": {"cores": self.cores}, "parameters": self.params, "results": self.rows})
    }

    /// The report as Markdown: machine, parameters, one table.
    pub fn to_table(&self) -> String {
        let p = &self.params;
        let mut out = format!(
            "machine: {} cores\nparameters: vms={} volumes={} services={} concurrency={:?} create_burst={} held_volumes={} held_services={} hosted_clusters={}\n\n",
            self.cores,
            p.vms,
            p.volumes,
            p.services,
            p.concurrency,
            p.create_burst,
            p.held_volumes,
            p.held_services,
            p.hosted_clusters
        );
        out.push_str("| section | metric | value | unit | target | met |\n");
        out.push_str("|---|---|---:|---|---|---|\n");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {:.2} | {} | {} | {} |\n",
                r.section, r.metric, r.value, r.unit, r.target, met
            ));
        }
        out
    }
}

/// `"<= 10"` -> (true, 10.0); `">= 5000"` -> (false, 5000.0).
fn parse_target(target: &str) -> Option<(bool, f64)> {
    let (at_most, rest) = if let Some(rest) = target.strip_prefix("<=") {
        (true, rest)
    } else {
        (false, target.strip_prefix(">=")?)
    };
    Some((at_most, rest.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            volumes: 1,
            services: 1,
            concurrency: vec![1],
            create_burst: 1,
            held_volumes: 1,
            held_services: 1,
            vms: 1,
            hosted_clusters: 1,
            hosted_control_planes: 0,
            shared_etcd_clusters: 0,
            ephemeral_clusters: 0,
        }
    }

    #[test]
    fn targets_are_judged_and_printed() {
        let mut r = Report::new(params());
        r.add_target("storage", "publish after Ready p50", 3.0, "ms", "<= 10");
        r.add_target("lb", "services/s", 50.0, "1/s", ">= 100");
        r.add("lb", "informational", 1.0, "ms");
        assert_eq!(r.rows[0].met, Some(true));
        assert_eq!(r.rows[1].met, Some(false));
        assert_eq!(r.rows[2].met, None);
        let table = r.to_table();
        assert!(table.contains("| storage | publish after Ready p50 | 3.00 | ms | <= 10 | yes |"));
        assert!(table.contains("**no**"));
        assert_eq!(r.to_json()["results"][1]["met"], json!(false));
    }
}
