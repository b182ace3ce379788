//! Packet-handling pieces shared by the XDP programs: header layouts and bounds-checked
//! access ([`parse`]) and checksum arithmetic ([`csum`]). Maps live with each program.
#![no_std]

pub mod csum;
pub mod parse;

/// The panic handler and GPL license section every XDP binary of this crate needs (the
/// helpers the programs call are GPL-only).
#[macro_export]
macro_rules! program_boilerplate {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
