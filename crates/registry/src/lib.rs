pub mod linkage;
