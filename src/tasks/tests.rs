//! Unit tests of the task machine, one or more per transition.
