//! A JSON body read as its schema says: an object where a struct is
//! expected. serde's derived structs also accept a JSON array of their
//! fields in order (`"quota": [null, null]`), which the OpenAPI document
//! does not allow and no client means; this deserializer over a parsed
//! [`Value`] refuses it and is otherwise `serde_json`'s.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Error, Map, Value};

/// A parsed JSON value that deserializes structs from objects only.
pub struct Strict(pub Value);

impl<'de> de::Deserializer<'de> for Strict {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => v.visit_seq(Seq(a.into_iter())),
            Value::Object(o) => v.visit_map(Obj::new(o)),
            other => de::Deserializer::deserialize_any(other, v),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(o) => v.visit_map(Obj::new(o)),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &object_of(name),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            other => v.visit_some(Strict(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(o) if o.len() == 1 => {
                let (variant, value) = o.into_iter().next().expect("one entry");
                v.visit_enum(Enum {
                    variant,
                    value: Some(value),
                })
            }
            Value::Object(o) => {
                de::Deserializer::deserialize_enum(Value::Object(o), name, variants, v)
            }
            Value::String(variant) => v.visit_enum(Enum {
                variant,
                value: None,
            }),
            other => de::Deserializer::deserialize_enum(other, name, variants, v),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct Expecting(String);

impl de::Expected for Expecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn object_of(name: &str) -> Expecting {
    Expecting(format!("an object ({name})"))
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Obj {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl Obj {
    fn new(o: Map<String, Value>) -> Self {
        Self {
            entries: o.into_iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for Obj {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Strict(v))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct Enum {
    variant: String,
    value: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for Enum {
    type Error = Error;
    type Variant = Variant;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Variant), Error> {
        let name = seed.deserialize(self.variant.into_deserializer())?;
        Ok((name, Variant(self.value)))
    }
}

struct Variant(Option<Value>);

impl<'de> de::VariantAccess<'de> for Variant {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(other) => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a unit variant",
            )),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.0 {
            Some(v) => seed.deserialize(Strict(v)),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Array(a)) => v.visit_seq(Seq(a.into_iter())),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a tuple variant",
            )),
        }
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Object(o)) => v.visit_map(Obj::new(o)),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        a: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Option<Inner>,
        list: Vec<Inner>,
        e: Option<E>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum E {
        Unit,
        New(u8),
    }

    fn read(s: &str) -> Result<Outer, Error> {
        Outer::deserialize(Strict(serde_json::from_str(s).unwrap()))
    }

    #[test]
    fn structs_only_from_objects() {
        let ok = read(r#"{"inner": {"a": 1}, "list": [{}], "e": {"new": 3}}"#).unwrap();
        assert_eq!(ok.inner, Some(Inner { a: Some(1) }));
        assert_eq!(ok.e, Some(E::New(3)));
        assert_eq!(
            read(r#"{"list": [], "e": "unit"}"#).unwrap().e,
            Some(E::Unit)
        );
        let e = read(r#"{"inner": [null], "list": []}"#).unwrap_err();
        assert!(e.to_string().contains("expected an object (Inner)"), "{e}");
        assert!(read(r#"[null, [], null]"#).is_err());
        let e = read(r#"{"list": [], "x": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
    }
}
