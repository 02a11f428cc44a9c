//! A throwaway PostgreSQL cluster: initdb into a temp dir, start on a free port, stop and remove.
#![forbid(unsafe_code)]
