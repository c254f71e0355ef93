//! The multi-process cluster harness and stress tools of rdlmfs (not built
//! yet): starting an NBD server, formatting, mounting N nodes as N
//! processes, killing one, and checking the survivors; and `rdlmfs-fsx`.
//! The shared-disk tests of the `blockdev` crate live beside that crate.
