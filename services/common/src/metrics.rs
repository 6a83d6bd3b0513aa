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
