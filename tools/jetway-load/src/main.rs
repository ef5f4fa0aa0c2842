fn main() { println!("jetway-load: not implemented yet"); }
