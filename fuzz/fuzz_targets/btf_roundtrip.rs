//! Well-formed BTF built from the input (structs and unions nesting each other, anonymous
//! members, typedef and const chains, bitfields, 32- and 64-bit enums): every offset,
//! size and enumerator the parser finds must be the one written, and every member offset
//! found must lie within its struct.
#![no_main]

use arbitrary::Arbitrary;
use collector_user::kernel::btf::{Btf, BtfError};
use libfuzzer_sys::fuzz_target;

const MAX_STRUCTS: usize = 8;
const MAX_MEMBERS: usize = 8;
const MEMBER_NAMES: &[&str] = &["pid", "tgid", "se", "sum_exec_runtime", "count", "a", "b"];
const ENUMERATORS: &[&str] = &["E0", "E1", "MM_FILEPAGES", "cpuacct_cgrp_id", "E4"];

#[derive(Arbitrary, Debug)]
struct Spec {
    structs: Vec<StructSpec>,
    enums: Vec<EnumSpec>,
    queries: Vec<Query>,
}

#[derive(Arbitrary, Debug)]
struct StructSpec {
    named: bool,
    union: bool,
    kind_flag: bool,
    padding: u8,
    members: Vec<MemberSpec>,
}

#[derive(Arbitrary, Debug)]
struct MemberSpec {
    /// 0: anonymous; else a name of MEMBER_NAMES.
    name: u8,
    /// int, long, pointer, or one of the structs after this one.
    ty: u8,
    offset_bytes: u8,
    /// 0: byte aligned; else a bit offset within the byte (a bitfield).
    bit: u8,
    /// Reference the type through `const` → `typedef` → type.
    via_alias: bool,
}

#[derive(Arbitrary, Debug)]
struct EnumSpec {
    wide: bool,
    values: Vec<(u8, i64)>,
}

#[derive(Arbitrary, Debug)]
struct Query {
    strukt: u8,
    first: u8,
    second: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    Int,
    Long,
    Ptr,
    Struct(usize),
}

struct Member {
    name: Option<&'static str>,
    ty: Ty,
    bits: u32,
    via_alias: bool,
}

struct Struct {
    name: Option<String>,
    union: bool,
    kind_flag: bool,
    size: u32,
    members: Vec<Member>,
}

/// The model: structs (a struct only embeds later ones, so sizes are well defined) and
/// enums.
struct Model {
    structs: Vec<Struct>,
    enums: Vec<(bool, Vec<(&'static str, i64)>)>,
}

impl Model {
    fn build(spec: &Spec) -> Self {
        let count = spec.structs.len().min(MAX_STRUCTS);
        let mut structs: Vec<Option<Struct>> = (0..count).map(|_| None).collect();
        for i in (0..count).rev() {
            let s = &spec.structs[i];
            let later = count - i - 1;
            let mut seen = Vec::new();
            let mut members = Vec::new();
            for m in s.members.iter().take(MAX_MEMBERS) {
                let name = match usize::from(m.name) % (MEMBER_NAMES.len() + 1) {
                    0 => None,
                    n => Some(MEMBER_NAMES[n - 1]),
                };
                // Names are unique within a struct (anonymous members may repeat).
                if let Some(name) = name {
                    if seen.contains(&name) {
                        continue;
                    }
                    seen.push(name);
                }
                let ty = match usize::from(m.ty) % (3 + later) {
                    0 => Ty::Int,
                    1 => Ty::Long,
                    2 => Ty::Ptr,
                    k => Ty::Struct(i + 1 + (k - 3)),
                };
                let bits = u32::from(m.offset_bytes) * 8 + u32::from(m.bit % 8);
                members.push(Member {
                    name,
                    ty,
                    bits,
                    via_alias: m.via_alias,
                });
            }
            let size_of = |ty: Ty| match ty {
                Ty::Int => 4,
                Ty::Long | Ty::Ptr => 8,
                Ty::Struct(j) => structs[j].as_ref().expect("later structs first").size,
            };
            let end = members
                .iter()
                .map(|m| m.bits.div_ceil(8) + size_of(m.ty))
                .max()
                .unwrap_or(0);
            structs[i] = Some(Struct {
                name: s.named.then(|| format!("s{i}")),
                union: s.union,
                kind_flag: s.kind_flag,
                size: end + u32::from(s.padding),
                members,
            });
        }
        let enums = spec
            .enums
            .iter()
            .take(4)
            .map(|e| {
                let values = e
                    .values
                    .iter()
                    .take(8)
                    .map(|&(n, v)| {
                        let name = ENUMERATORS[usize::from(n) % ENUMERATORS.len()];
                        (name, if e.wide { v } else { i64::from(v as i32) })
                    })
                    .collect();
                (e.wide, values)
            })
            .collect();
        Model {
            structs: structs.into_iter().map(Option::unwrap).collect(),
            enums,
        }
    }

    fn size_of(&self, ty: Ty) -> u32 {
        match ty {
            Ty::Int => 4,
            Ty::Long | Ty::Ptr => 8,
            Ty::Struct(j) => self.structs[j].size,
        }
    }

    /// `name` in struct `i`, looking through anonymous members depth first.
    fn find(&self, i: usize, name: &str) -> Option<(u32, Ty)> {
        for m in &self.structs[i].members {
            match (m.name, m.ty) {
                (None, Ty::Struct(j)) => {
                    if let Some((bits, ty)) = self.find(j, name) {
                        return Some((m.bits + bits, ty));
                    }
                }
                (None, _) => {}
                (Some(n), ty) if n == name => return Some((m.bits, ty)),
                (Some(_), _) => {}
            }
        }
        None
    }

    /// The byte offset and type `member_offset` must find, `Err(true)` for a bitfield,
    /// `Err(false)` for no such member.
    fn offset(&self, i: usize, path: &[&str]) -> Result<(u32, Ty), bool> {
        let (mut bits, mut ty) = (0, Ty::Struct(i));
        for part in path {
            let Ty::Struct(j) = ty else {
                return Err(false);
            };
            let (off, member_ty) = self.find(j, part).ok_or(false)?;
            bits += off;
            ty = member_ty;
        }
        if bits % 8 != 0 {
            return Err(true);
        }
        Ok((bits / 8, ty))
    }
}

/// BTF type ids: 1 int, 2 long, 3 pointer, then the structs, then for each struct a
/// `const` and a `typedef` in front of it, then the enums.
struct Ids {
    structs: usize,
}

impl Ids {
    fn of(&self, ty: Ty, via_alias: bool) -> u32 {
        let id = match ty {
            Ty::Int => return 1,
            Ty::Long => return 2,
            Ty::Ptr => return 3,
            Ty::Struct(j) if via_alias => 4 + self.structs + 2 * j,
            Ty::Struct(j) => 4 + j,
        };
        id as u32
    }
}

#[derive(Default)]
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Writer {
    fn string(&mut self, s: &str) -> u32 {
        if self.strings.is_empty() {
            self.strings.push(0);
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    fn head(&mut self, name: u32, kind: u32, vlen: usize, kind_flag: bool, size_or_type: u32) {
        self.u32(name);
        self.u32(kind << 24 | vlen as u32 | u32::from(kind_flag) << 31);
        self.u32(size_or_type);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.strings.is_empty() {
            self.strings.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24, 0, self.types.len() as u32, self.types.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

fn encode(model: &Model) -> Vec<u8> {
    let ids = Ids {
        structs: model.structs.len(),
    };
    let mut w = Writer::default();
    let int = w.string("int");
    w.head(int, 1, 0, false, 4);
    w.u32(32);
    let long = w.string("long");
    w.head(long, 1, 0, false, 8);
    w.u32(64);
    w.head(0, 2, 0, false, 0);
    for s in &model.structs {
        let name = s.name.as_deref().map_or(0, |n| w.string(n));
        let kind = if s.union { 5 } else { 4 };
        w.head(name, kind, s.members.len(), s.kind_flag, s.size);
        for m in &s.members {
            let name = m.name.map_or(0, |n| w.string(n));
            w.u32(name);
            w.u32(ids.of(m.ty, m.via_alias));
            // With kind_flag, the top 8 bits hold a bitfield size.
            w.u32(if s.kind_flag {
                3 << 24 | m.bits
            } else {
                m.bits
            });
        }
    }
    for j in 0..model.structs.len() {
        let typedef = ids.of(Ty::Struct(j), true) + 1;
        w.head(0, 10, 0, false, typedef); // const -> typedef
        let name = w.string(&format!("t{j}"));
        w.head(name, 8, 0, false, ids.of(Ty::Struct(j), false)); // typedef -> struct
    }
    for (wide, values) in &model.enums {
        let kind = if *wide { 19 } else { 6 };
        w.head(0, kind, values.len(), false, if *wide { 8 } else { 4 });
        for &(name, value) in values {
            let name = w.string(name);
            w.u32(name);
            if *wide {
                w.u32(value as u32);
                w.u32((value >> 32) as u32);
            } else {
                w.u32(value as u32);
            }
        }
    }
    w.finish()
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |spec: Spec| {
    let model = Model::build(&spec);
    let bytes = encode(&model);
    let btf = Btf::parse(&bytes).expect("well-formed BTF parses");

    for (i, s) in model.structs.iter().enumerate() {
        let Some(name) = &s.name else {
            continue;
        };
        assert!(btf.has_struct(name));
        match btf.struct_size(name) {
            Ok(size) => assert!(!s.members.is_empty() && size == s.size),
            Err(BtfError::NoStruct(_)) => assert!(s.members.is_empty()),
            Err(e) => panic!("struct_size({name}): {e}"),
        }
        let _ = i;
    }
    for q in spec.queries.iter().take(16) {
        if model.structs.is_empty() {
            break;
        }
        let i = usize::from(q.strukt) % model.structs.len();
        let Some(name) = &model.structs[i].name else {
            continue;
        };
        let mut path = vec![MEMBER_NAMES[usize::from(q.first) % MEMBER_NAMES.len()]];
        path.extend(q.second.map(|n| MEMBER_NAMES[usize::from(n) % MEMBER_NAMES.len()]));
        let joined = path.join(".");
        let found = btf.member_offset(name, &joined);
        match (model.offset(i, &path), &found) {
            (Ok((offset, ty)), Ok(got)) => {
                assert_eq!(*got, offset, "{name}.{joined}");
                assert!(
                    offset + model.size_of(ty) <= model.structs[i].size,
                    "{name}.{joined} at {offset} runs past the struct's {} bytes",
                    model.structs[i].size
                );
            }
            (Err(true), Err(BtfError::Malformed(_))) => {}
            (Err(false), Err(BtfError::NoMember { .. })) => {}
            (expected, got) => panic!("{name}.{joined}: expected {expected:?}, got {got:?}"),
        }
    }
    for (name, expected) in ENUMERATORS.iter().map(|&n| {
        let first = model
            .enums
            .iter()
            .flat_map(|(_, values)| values)
            .find(|(v, _)| *v == n)
            .map(|&(_, value)| value);
        (n, first)
    }) {
        match (btf.enum_value(name), expected) {
            (Ok(v), Some(e)) => assert_eq!(v, e, "{name}"),
            (Err(BtfError::NoEnumerator(_)), None) => {}
            (got, e) => panic!("enum_value({name}): expected {e:?}, got {got:?}"),
        }
    }
});
