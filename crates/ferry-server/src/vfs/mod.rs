//! The home-directory jail: virtual paths and file operations beneath a directory handle.
