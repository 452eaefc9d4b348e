fn main() {
    println!("virtualfit");
}
