//! Metric label values as enums: a label can only take the values its enum lists, every series can be
//! created at zero from `ALL`, and the text dashboards and alerts match on is written once.

/// Declares an enum of metric label values, each with its exact text, implementing
/// `prometheus_client`'s `EncodeLabelValue`; `ALL` lists every value.
#[macro_export]
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, so each series can exist from the start, at zero.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder,
            ) -> Result<(), ::std::fmt::Error> {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// A failure kind as a metric label (`oom-killed`, `crash-loop`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    /// The failure kind.
    pub kind: &'static str,
}

/// A latency histogram per failure kind: the SLIs operators put on dashboards and SLOs.
pub type SliHistograms = prometheus_client::metrics::family::Family<
    KindLabel,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

fn sli_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 50 ms to about an hour: detection is sub-second, a verified fix takes minutes.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 17),
    )
}

/// Empty SLI histograms, with a series for every failure kind so each exists from the start.
pub fn sli_histograms() -> SliHistograms {
    let family = SliHistograms::new_with_constructor(sli_histogram);
    for kind in kubesent_proto::FailureKind::ALL {
        let _ = family.get_or_create(&KindLabel { kind: kind.as_str() });
    }
    family
}

/// Observes the seconds from `since` to `now` for `kind`; nothing when `since` is in the future (a clock
/// ahead of this one), which a histogram of elapsed time cannot hold.
pub fn observe_since(
    family: &SliHistograms,
    kind: kubesent_proto::FailureKind,
    since: jiff::Timestamp,
    now: jiff::Timestamp,
) {
    let seconds = now.duration_since(since).as_secs_f64();
    if seconds >= 0.0 {
        family.get_or_create(&KindLabel { kind: kind.as_str() }).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::{EncodeLabelSet, text::encode},
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    label_values! {
        /// A test label.
        enum Colour {
            /// Red.
            Red => "red",
            /// Dark blue.
            DarkBlue => "dark_blue",
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Labels {
        colour: Colour,
    }

    #[test]
    fn a_label_enum_is_exported_with_its_text_and_every_value_exists_at_zero() {
        let family = Family::<Labels, Counter>::default();
        for colour in Colour::ALL {
            let _ = family.get_or_create(&Labels { colour: *colour });
        }
        family.get_or_create(&Labels { colour: Colour::DarkBlue }).inc();
        let mut registry = Registry::default();
        registry.register("paint", "Paint used", family);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoded");
        assert!(text.contains("paint_total{colour=\"red\"} 0"), "{text}");
        assert!(text.contains("paint_total{colour=\"dark_blue\"} 1"), "{text}");
    }
}
