//! The on-disk format of record values: JSON in a versioned envelope, `{"v":1,"data":...}`.
//!
//! Every persisted record carries its format version so that a newer taba can read records
//! written by an older one (rolling upgrades) and an older taba refuses, with a clear error,
//! records written by a newer one instead of misreading them.
//!
//! When the shape of stored data changes incompatibly, bump [`FORMAT_VERSION`] and add an arm
//! to [`migrate`] that rewrites data of the previous version into the new shape. Old records are
//! then upgraded as they are read; they are rewritten in the new version the next time they are
//! put.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::StoreError;

/// The record format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u64 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a, T: ?Sized> {
    v: u64,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    v: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Encodes `value` as versioned JSON; fails only if `T`'s `Serialize` implementation does
/// (for instance a map whose keys are not strings).
pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&EnvelopeOut {
        v: FORMAT_VERSION,
        data: value,
    })
    .map_err(StoreError::Encode)
}

/// Encodes `value` as versioned JSON.
///
/// # Panics
///
/// If `T`'s `Serialize` implementation fails, which the plain data records of taba-types never
/// do (structs, enums, string-keyed maps). Use [`try_encode`] for types that can fail.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match try_encode(value) {
        Ok(bytes) => bytes,
        Err(err) => panic!("record type cannot be encoded as json: {err:?}"),
    }
}

/// Decodes versioned JSON written by [`encode`], migrating data of older format versions.
///
/// Fails with [`StoreError::UnsupportedVersion`] for versions newer than [`FORMAT_VERSION`] (or
/// the never-issued version 0), and with [`StoreError::Decode`] for bytes that are not an
/// envelope or whose data does not fit `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let envelope: EnvelopeIn<'_> = serde_json::from_slice(bytes).map_err(StoreError::Decode)?;
    if envelope.v == FORMAT_VERSION {
        return serde_json::from_str(envelope.data.get()).map_err(StoreError::Decode);
    }
    let data: serde_json::Value =
        serde_json::from_str(envelope.data.get()).map_err(StoreError::Decode)?;
    let data = migrate(envelope.v, data)?;
    serde_json::from_value(data).map_err(StoreError::Decode)
}

/// Upgrades `data` written in format `version` to [`FORMAT_VERSION`], one version at a time.
///
/// There are no older versions yet: version 1 is the first. When version 2 is introduced, add
/// `1 => upgrade_1_to_2(data)?` here and loop until the current version is reached.
fn migrate(version: u64, data: serde_json::Value) -> Result<serde_json::Value, StoreError> {
    match version {
        FORMAT_VERSION => Ok(data),
        _ => Err(StoreError::UnsupportedVersion {
            what: "record",
            version,
            supported: FORMAT_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Job {
        name: String,
        count: u32,
    }

    #[test]
    fn round_trips_through_the_envelope() {
        let job = Job {
            name: "web".into(),
            count: 3,
        };
        let bytes = encode(&job);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"data":{"name":"web","count":3}}"#
        );
        assert_eq!(decode::<Job>(&bytes).unwrap(), job);
    }

    #[test]
    fn rejects_future_versions_clearly() {
        let err = decode::<Job>(br#"{"v":2,"data":{"name":"web","count":3}}"#).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedVersion {
                    what: "record",
                    version: 2,
                    supported: 1
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
        let err = decode::<Job>(br#"{"v":0,"data":{}}"#).unwrap_err();
        assert!(matches!(
            err,
            StoreError::UnsupportedVersion { version: 0, .. }
        ));
    }

    #[test]
    fn rejects_bytes_without_an_envelope() {
        for bad in [
            &br#"{"name":"web","count":3}"#[..],
            br#"{"v":"1","data":{}}"#,
            br#"{"v":1}"#,
            b"\xff\xfe",
            b"",
        ] {
            let err = decode::<Job>(bad).unwrap_err();
            assert!(matches!(err, StoreError::Decode(_)), "{bad:?}: {err:?}");
        }
        let err = decode::<Job>(br#"{"v":1,"data":{"name":7,"count":3}}"#).unwrap_err();
        assert!(matches!(err, StoreError::Decode(_)), "{err:?}");
    }

    #[test]
    fn try_encode_reports_unencodable_values() {
        let mut map = BTreeMap::new();
        map.insert(vec![1u8], 1);
        assert!(matches!(try_encode(&map), Err(StoreError::Encode(_))));
    }
}
