//! Zeroizing storage for key objects of crypto libraries that do not wipe themselves.
//!
//! ring's AES-GCM and HMAC keys hold expanded key schedules but implement no `Drop`, so their
//! memory would keep key material after use. [`Wiped`] keeps such a value in a `MaybeUninit`,
//! whose bytes may legally be overwritten with zeros on drop (no validity invariant), and
//! never reads the value again afterwards.

use std::mem::MaybeUninit;

use zeroize::Zeroize;

/// A value whose bytes are zeroed when it is dropped. Only for types without drop glue.
pub(crate) struct Wiped<T> {
    inner: MaybeUninit<T>,
}

impl<T> Wiped<T> {
    const NO_DROP_GLUE: () = assert!(
        !std::mem::needs_drop::<T>(),
        "Wiped<T> skips T's destructor; T must not need one"
    );

    pub(crate) fn new(value: T) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::NO_DROP_GLUE;
        Wiped {
            inner: MaybeUninit::new(value),
        }
    }
}

impl<T> std::ops::Deref for Wiped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `inner` is initialised in `new` and only overwritten in `drop`, after which
        // no reference to it can exist.
        unsafe { self.inner.assume_init_ref() }
    }
}

impl<T> Drop for Wiped<T> {
    fn drop(&mut self) {
        // T has no destructor to run (checked at compile time in `new`); wipe its bytes.
        self.inner.zeroize();
    }
}
