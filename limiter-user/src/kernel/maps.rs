//! Access to the object's maps by name, with errors that name the map.
//!
//! A module that writes a map holds a handle of its own, taken once with
//! [`own`] when it is created (a duplicate of the object's descriptor, so
//! the object keeps its map for readers and for the programs). Every other
//! module reads through [`read`], whose handles borrow the object and cannot
//! write: the type system keeps one writer per map. The table of owners is
//! `limiter_common::maps::MAPS`; `docs/design.md` shows it.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};

use crate::kernel::error::LoadError;

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

/// The error of a batched lookup (`kernel::batch`) of map `name`.
pub(crate) fn batch_err(name: &'static str) -> impl FnOnce(std::io::Error) -> LoadError {
    move |io_error| {
        map_err(name)(MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error }))
    }
}

/// A descriptor of the caller's own on map `name`, for the `bpf()` calls
/// aya does not make (`kernel::batch`).
pub(crate) fn own_fd(ebpf: &Ebpf, name: &'static str) -> Result<std::os::fd::OwnedFd, LoadError> {
    let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
    let (Map::Array(data) | Map::HashMap(data) | Map::LruHashMap(data) | Map::LpmTrie(data)) = map else {
        return Err(LoadError::Incompatible(format!("{name} has an unexpected map type")));
    };
    data.fd().as_fd().try_clone_to_owned().map_err(|source| LoadError::Handle { name, source })
}

/// A writable handle of the caller's own on map `name`, typed as `T`.
pub(crate) fn own<T: TryFrom<Map, Error = MapError>>(ebpf: &Ebpf, name: &'static str) -> Result<T, LoadError> {
    let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
    let dup = |data: &MapData| -> Result<MapData, LoadError> {
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|source| LoadError::Handle { name, source })?;
        MapData::from_fd(fd).map_err(map_err(name))
    };
    let owned = match map {
        Map::Array(d) => Map::Array(dup(d)?),
        Map::HashMap(d) => Map::HashMap(dup(d)?),
        Map::LruHashMap(d) => Map::LruHashMap(dup(d)?),
        Map::SockMap(d) => Map::SockMap(dup(d)?),
        Map::LpmTrie(d) => Map::LpmTrie(dup(d)?),
        Map::PerCpuArray(d) => Map::PerCpuArray(dup(d)?),
        Map::RingBuf(d) => Map::RingBuf(dup(d)?),
        _ => return Err(LoadError::Incompatible(format!("{name} has an unexpected map type"))),
    };
    T::try_from(owned).map_err(map_err(name))
}

/// A read-only handle on map `name`, typed as `T` (for example
/// `Array<&MapData, u64>`, which has no `set`).
pub(crate) fn read<'a, T: TryFrom<&'a Map, Error = MapError>>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    T::try_from(ebpf.map(name).ok_or(LoadError::MissingMap(name))?).map_err(map_err(name))
}

/// The `max_entries` a map was created with (a pinned one keeps its own).
pub(crate) fn map_size(ebpf: &Ebpf, name: &'static str) -> Result<u32, LoadError> {
    let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
    let (Map::Array(data) | Map::HashMap(data) | Map::LruHashMap(data) | Map::LpmTrie(data)) = map else {
        return Err(LoadError::Incompatible(format!("{name} has an unexpected map type")));
    };
    data.info().map(|i| i.max_entries()).map_err(map_err(name))
}
