//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find
//! struct member offsets and enum values, which the eBPF programs receive as read-only
//! globals, and the type ids of kernel functions, which their kfunc calls name. aya-obj parses BTF too but keeps its type accessors private.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading BTF from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct named `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("BTF has no enumerator `{0}`")]
    NoEnumerator(String),
}

const MAGIC: u16 = 0xeb9f;

/// Bounds on the search through anonymous structs and unions (see `find_member`).
const MAX_ANONYMOUS_DEPTH: u32 = 16;
const MAX_MEMBERS_VISITED: u32 = 1 << 16;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    /// Typedef and type modifiers: resolve through to `target`.
    Alias {
        target: u32,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    Func {
        name: u32,
    },
    Other,
}

/// Parsed BTF type table. Type id `n` is `types[n]`; id 0 is `void`.
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    /// Struct name -> type ids (a name may appear more than once, e.g. a forward declaration).
    structs: HashMap<String, Vec<u32>>,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Malformed("shorter than the header"));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strs_start = hdr_len + str_off;
        let strs_end = strs_start + str_len;
        if types_end > data.len() || strs_end > data.len() {
            return Err(BtfError::Malformed("sections run past the end"));
        }
        let strings = data[strs_start..strs_end].to_vec();
        let tdata = &data[types_start..types_end];

        let mut types = vec![Type::Other]; // id 0: void
        let mut off = 0;
        while off < tdata.len() {
            let name = u32_at(tdata, off)?;
            let info = u32_at(tdata, off + 4)?;
            let size_or_type = u32_at(tdata, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    off += 4;
                    Type::Other
                }
                KIND_FUNC => Type::Func { name },
                KIND_PTR | KIND_FWD | KIND_FLOAT | KIND_TYPE_TAG => Type::Other,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT => Type::Alias {
                    target: size_or_type,
                },
                KIND_ARRAY => {
                    off += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw_offset = u32_at(tdata, m + 8)?;
                        members.push(Member {
                            name: u32_at(tdata, m)?,
                            type_id: u32_at(tdata, m + 4)?,
                            bit_offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    off += vlen * 12;
                    Type::Composite {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 8;
                        values.push((u32_at(tdata, e)?, u32_at(tdata, e + 4)? as i32 as i64));
                    }
                    off += vlen * 8;
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 12;
                        let lo = u32_at(tdata, e + 4)? as u64;
                        let hi = u32_at(tdata, e + 8)? as u64;
                        values.push((u32_at(tdata, e)?, (hi << 32 | lo) as i64));
                    }
                    off += vlen * 12;
                    Type::Enum { values }
                }
                KIND_FUNC_PROTO => {
                    off += vlen * 8;
                    Type::Other
                }
                KIND_VAR | KIND_DECL_TAG => {
                    off += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    off += vlen * 12;
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }
        if off != tdata.len() {
            return Err(BtfError::Malformed("type section does not end on a type"));
        }

        let mut btf = Btf {
            strings,
            types,
            structs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name, .. } = ty {
                if *name != 0 {
                    let name = btf.string(*name)?.to_owned();
                    btf.structs.entry(name).or_default().push(id as u32);
                }
            }
        }
        Ok(btf)
    }

    /// The type id of the kernel function `name` (a `BTF_KIND_FUNC`), if the BTF has it.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types.iter().enumerate().find_map(|(id, ty)| match ty {
            Type::Func { name: n } if self.string(*n).ok() == Some(name) => Some(id as u32),
            _ => None,
        })
    }

    fn string(&self, off: u32) -> Result<&str, BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or(BtfError::Malformed("string offset out of range"))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Malformed("string is not UTF-8"))
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Finds `name` among the members of the composite type `id`, looking through
    /// anonymous structs and unions. Returns (bit offset, member type id).
    ///
    /// The BTF is the kernel's, but it is still parsed as untrusted input: anonymous
    /// nesting is bounded in depth (real kernels nest a few levels) and in members
    /// visited, so a cyclic or exponentially branching table cannot hang or overflow.
    fn find_member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let mut budget = MAX_MEMBERS_VISITED;
        self.find_member_within(id, name, MAX_ANONYMOUS_DEPTH, &mut budget)
    }

    fn find_member_within(
        &self,
        id: u32,
        name: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize)
        else {
            return Ok(None);
        };
        for m in members {
            *budget = budget
                .checked_sub(1)
                .ok_or(BtfError::Malformed("too many members to search"))?;
            if m.name == 0 {
                if depth == 0 {
                    return Err(BtfError::Malformed("anonymous members nested too deep"));
                }
                if let Some((inner, ty)) =
                    self.find_member_within(m.type_id, name, depth - 1, budget)?
                {
                    let offset = m
                        .bit_offset
                        .checked_add(inner)
                        .ok_or(BtfError::Malformed("member offset overflows"))?;
                    return Ok(Some((offset, ty)));
                }
            } else if self.string(m.name)? == name {
                return Ok(Some((m.bit_offset, m.type_id)));
            }
        }
        Ok(None)
    }

    /// Byte offset of a member path such as `se.sum_exec_runtime` within `struct strukt`.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let ids = self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        // Skip empty forward-declaration-like entries: take the first that has the member.
        'candidates: for &start in ids {
            let mut ty = start;
            let mut bits = 0;
            for part in path.split('.') {
                match self.find_member(ty, part)? {
                    Some((off, member_ty)) => {
                        bits = u32::checked_add(bits, off)
                            .ok_or(BtfError::Malformed("member offset overflows"))?;
                        ty = member_ty;
                    }
                    None => continue 'candidates,
                }
            }
            if bits % 8 != 0 {
                return Err(BtfError::Malformed("member is a bitfield"));
            }
            return Ok(bits / 8);
        }
        Err(BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: path.to_owned(),
        })
    }

    /// Value of the enumerator `name` (searched across all enums, as C scopes them).
    pub fn enum_value(&self, name: &str) -> Result<i64, BtfError> {
        for ty in &self.types {
            if let Type::Enum { values } = ty {
                for &(n, v) in values {
                    if self.string(n)? == name {
                        return Ok(v);
                    }
                }
            }
        }
        Err(BtfError::NoEnumerator(name.to_owned()))
    }

    /// Size in bytes of `struct strukt` (the first definition with members).
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        self.structs
            .get(strukt)
            .into_iter()
            .flatten()
            .find_map(|&id| match &self.types[id as usize] {
                Type::Composite { size, members, .. } if !members.is_empty() => Some(*size),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))
    }

    /// Whether a struct of this name exists (used to probe kernel features).
    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }
}

#[cfg(test)]
#[path = "btf_tests.rs"]
mod tests;
