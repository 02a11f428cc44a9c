use sluice_policy::{analyze, Analysis};
fn main() {
    for sql in std::env::args().skip(1) {
        match analyze(&sql) {
            Analysis::Unparsed { reason, do_block } => println!("{sql}\n   UNPARSED do={do_block} {reason}"),
            Analysis::Statements(v) => {
                println!("{sql}");
                for f in v {
                    let j = |n: &[sluice_policy::Name]| n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
                    println!("   {} {:?} {:?} r=[{}] t=[{}]/{:?} fn=[{}] unf=[{}] copy={:?} role={} sp={} dmc={} eaw={} code={} opaque={:?} schemas={:?}",
                        f.tag, f.kind, f.class, j(&f.reads), j(&f.targets), f.target_class, j(&f.functions), j(&f.unfiltered_writes), f.copy, f.role_change, f.search_path_change, f.data_modifying_cte, f.explain_analyze_write, f.code_definition, f.opaque, f.schemas);
                }
            }
        }
    }
}
