//! An in-process BMC for other crates' tests and kiln's simulator: records every call, can fail the next N calls
//! (or only the next N actions), stop answering, answer slowly or panic like a driver bug, and moves power on its own
//! after a delay (`Auto`) or only when poked (`Explicit`), like omicron's sp-sim.
//! Time is `tokio::time`, so tests with a paused clock control it. It does no I/O.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::Bmc;
use crate::error::BmcError;
use crate::types::{BootMode, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};

/// How power changes land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    /// A power action takes effect `delay` after it was accepted (real BMCs take seconds; sushy 1-11 s).
    Auto { delay: Duration },
    /// A power action takes effect only when the test calls [`FakeBmc::poke`].
    Explicit,
}

/// A call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    PowerState,
    SetPower(PowerAction),
    SetBoot(BootTarget, BootPersistence),
    InsertMedia(String),
    EjectMedia,
    Inventory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    To(PowerState),
    /// Off then on again (cycle, reset): the host boots.
    Reboot,
}

#[derive(Debug)]
struct State {
    power: PowerState,
    mode: PowerMode,
    pending: Option<(Transition, Instant)>,
    boot: Option<(BootTarget, BootPersistence)>,
    media: Option<String>,
    inventory: Inventory,
    capabilities: Capabilities,
    calls: Vec<FakeCall>,
    boots: Vec<BootTarget>,
    fail_next: u32,
    fail_actions: u32,
    panic_next: u32,
    latency: Duration,
    failure: Failure,
    unresponsive: bool,
    timeout: Duration,
    on_boot: Option<BootHook>,
}

/// Told of every boot as it happens (a simulator starts the booted host's firmware from it).
#[derive(Clone)]
struct BootHook(Arc<dyn Fn(BootTarget) + Send + Sync>);

impl std::fmt::Debug for BootHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootHook")
    }
}

/// Makes the error of an injected failure.
#[derive(Clone)]
struct Failure(Arc<dyn Fn() -> BmcError + Send + Sync>);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Failure")
    }
}

/// A fake BMC. Clones share state: keep one in the test, hand another to the code under test.
#[derive(Debug, Clone)]
pub struct FakeBmc {
    name: String,
    state: Arc<Mutex<State>>,
}

impl FakeBmc {
    /// A powered-off host whose power actions land after 2 s, with every capability and a small inventory.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let failure_name = name.clone();
        Self {
            state: Arc::new(Mutex::new(State {
                power: PowerState::Off,
                mode: PowerMode::Auto {
                    delay: Duration::from_secs(2),
                },
                pending: None,
                boot: None,
                media: None,
                inventory: Inventory {
                    manufacturer: Some("kiln".into()),
                    model: Some("FakeBmc".into()),
                    serial_number: Some(format!("FAKE-{name}")),
                    processor_count: Some(2),
                    memory_mib: Some(4096),
                    nic_macs: vec!["52:54:00:00:00:01".into()],
                    ..Default::default()
                },
                capabilities: Capabilities {
                    virtual_media: true,
                    uefi_http_boot: true,
                    inventory: true,
                },
                calls: Vec::new(),
                boots: Vec::new(),
                fail_next: 0,
                fail_actions: 0,
                panic_next: 0,
                latency: Duration::ZERO,
                failure: Failure(Arc::new(move || BmcError::Http {
                    bmc: failure_name.clone(),
                    operation: "fake".into(),
                    status: 503,
                    message: "injected failure".into(),
                })),
                unresponsive: false,
                timeout: Duration::from_secs(30),
                on_boot: None,
            })),
            name,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Calls `hook` with the boot target each time the host boots (power on from off, cycle, reset), when the
    /// transition lands. In [`PowerMode::Auto`] transitions then land on their own at their due time (a task on the
    /// current Tokio runtime), not only when the next call looks. `hook` runs under the fake's lock: keep it short
    /// (send on a channel).
    pub fn on_boot(self, hook: impl Fn(BootTarget) + Send + Sync + 'static) -> Self {
        self.with(|s| s.on_boot = Some(BootHook(Arc::new(hook))));
        self
    }

    pub fn with_power(self, power: PowerState) -> Self {
        self.with(|s| s.power = power);
        self
    }

    pub fn with_mode(self, mode: PowerMode) -> Self {
        self.with(|s| s.mode = mode);
        self
    }

    pub fn with_inventory(self, inventory: Inventory) -> Self {
        self.with(|s| s.inventory = inventory);
        self
    }

    pub fn with_capabilities(self, capabilities: Capabilities) -> Self {
        self.with(|s| s.capabilities = capabilities);
        self
    }

    /// How long a call takes to time out while the fake is unresponsive (default 30 s).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.timeout = timeout);
        self
    }

    /// The next `n` calls fail (by default with a transient HTTP 503).
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    /// The next `n` calls fail with the error `make` returns.
    pub fn fail_next_with(&self, n: u32, make: impl Fn() -> BmcError + Send + Sync + 'static) {
        self.with(|s| {
            s.fail_next = n;
            s.failure = Failure(Arc::new(make));
        });
    }

    /// The next `n` actions (power, boot device, media) fail with the injected failure; reads still answer.
    pub fn fail_actions(&self, n: u32) {
        self.with(|s| s.fail_actions = n);
    }

    /// The next `n` calls panic, as a driver bug would.
    pub fn panic_next(&self, n: u32) {
        self.with(|s| s.panic_next = n);
    }

    /// Every call takes `latency` before it is answered (a BMC slow to answer).
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// While unresponsive, every call waits for the timeout and fails with `BmcError::Timeout`.
    pub fn set_unresponsive(&self, unresponsive: bool) {
        self.with(|s| s.unresponsive = unresponsive);
    }

    /// Explicit mode: completes the pending power transition now. Returns whether there was one.
    pub fn poke(&self) -> bool {
        self.with(|s| match s.pending.take() {
            Some((t, _)) => {
                apply(s, t);
                true
            }
            None => false,
        })
    }

    /// Changes the power state behind the driver's back (the host shut itself down).
    pub fn set_power_state(&self, power: PowerState) {
        self.with(|s| {
            if s.power == PowerState::Off && power == PowerState::On {
                record_boot(s);
            }
            s.power = power;
            s.pending = None;
        });
    }

    /// The power state now (settling an Auto transition that is due), without recording a call.
    pub fn power(&self) -> PowerState {
        self.with(|s| {
            settle(s);
            s.power
        })
    }

    /// Whether a power action was accepted but has not landed yet.
    pub fn transition_pending(&self) -> bool {
        self.with(|s| {
            settle(s);
            s.pending.is_some()
        })
    }

    pub fn boot_override(&self) -> Option<(BootTarget, BootPersistence)> {
        self.with(|s| s.boot)
    }

    pub fn media(&self) -> Option<String> {
        self.with(|s| s.media.clone())
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.with(|s| s.calls.clone())
    }

    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    /// What the host booted from at each power on or reboot (the override, else the disk).
    pub fn boots(&self) -> Vec<BootTarget> {
        self.with(|s| {
            settle(s);
            s.boots.clone()
        })
    }

    /// Records the call, then fails it if told to.
    async fn enter(&self, call: FakeCall) -> Result<(), BmcError> {
        let (unresponsive, timeout, failure, latency, panic) = self.with(|s| {
            s.calls.push(call.clone());
            settle(s);
            let action = !matches!(call, FakeCall::PowerState | FakeCall::Inventory);
            let failure = if action && s.fail_actions > 0 {
                s.fail_actions -= 1;
                Some((s.failure.0)())
            } else if s.fail_next > 0 {
                s.fail_next -= 1;
                Some((s.failure.0)())
            } else {
                None
            };
            let panic = s.panic_next > 0;
            s.panic_next = s.panic_next.saturating_sub(1);
            (s.unresponsive, s.timeout, failure, s.latency, panic)
        });
        if panic {
            panic!("fake BMC driver bug in {call:?} ({})", self.name);
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if unresponsive {
            tokio::time::sleep(timeout).await;
            return Err(BmcError::Timeout {
                bmc: self.name.clone(),
                operation: format!("{call:?}"),
                after: timeout,
            });
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn settle(s: &mut State) {
    if let (PowerMode::Auto { .. }, Some((t, due))) = (s.mode, s.pending)
        && Instant::now() >= due
    {
        s.pending = None;
        apply(s, t);
    }
}

fn apply(s: &mut State, t: Transition) {
    match t {
        Transition::To(PowerState::On) => {
            if s.power != PowerState::On {
                record_boot(s);
            }
            s.power = PowerState::On;
        }
        Transition::To(p) => s.power = p,
        Transition::Reboot => {
            record_boot(s);
            s.power = PowerState::On;
        }
    }
}

fn record_boot(s: &mut State) {
    let target = match s.boot {
        Some((target, persistence)) => {
            if persistence == BootPersistence::Once {
                s.boot = None;
            }
            target
        }
        None => BootTarget::Disk { mode: BootMode::Uefi },
    };
    s.boots.push(target);
    if let Some(hook) = &s.on_boot {
        (hook.0)(target);
    }
}

impl Bmc for FakeBmc {
    type Error = BmcError;

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        self.enter(FakeCall::PowerState).await?;
        Ok(self.with(|s| s.power))
    }

    async fn set_power(&self, action: PowerAction) -> Result<(), BmcError> {
        self.enter(FakeCall::SetPower(action)).await?;
        self.with(|s| {
            let target = match s.pending {
                Some((Transition::To(p), _)) => p,
                Some((Transition::Reboot, _)) => PowerState::On,
                None => s.power,
            };
            // Off then On before the Off landed: a real host still goes down and comes up again, so it boots.
            let off_pending = matches!(s.pending, Some((Transition::To(PowerState::Off), _)));
            let transition = match action {
                PowerAction::On if off_pending && s.power == PowerState::On => Transition::Reboot,
                PowerAction::On if target == PowerState::On => return,
                PowerAction::Off | PowerAction::ForceOff if target == PowerState::Off => return,
                PowerAction::On => Transition::To(PowerState::On),
                PowerAction::Off | PowerAction::ForceOff => Transition::To(PowerState::Off),
                PowerAction::Cycle | PowerAction::Reset if target == PowerState::Off => Transition::To(PowerState::On),
                PowerAction::Cycle | PowerAction::Reset => Transition::Reboot,
            };
            let due = match s.mode {
                PowerMode::Auto { delay } => Instant::now() + delay,
                PowerMode::Explicit => Instant::now(),
            };
            s.pending = Some((transition, due));
            // A host with a boot hook is simulated: its transitions land at their time, whether or not anyone asks.
            if matches!(s.mode, PowerMode::Auto { .. })
                && s.on_boot.is_some()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let state = Arc::downgrade(&self.state);
                rt.spawn(async move {
                    tokio::time::sleep_until(due).await;
                    if let Some(state) = state.upgrade() {
                        settle(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
                    }
                });
            }
        });
        Ok(())
    }

    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        self.enter(FakeCall::SetBoot(target, persistence)).await?;
        let unsupported = self.with(|s| {
            let caps = s.capabilities;
            let ok = match target {
                BootTarget::UefiHttp => caps.uefi_http_boot,
                BootTarget::VirtualCd { .. } => caps.virtual_media,
                BootTarget::Pxe { .. } | BootTarget::Disk { .. } => true,
            };
            if ok {
                s.boot = Some((target, persistence));
            }
            !ok
        });
        if unsupported {
            return Err(BmcError::Unsupported {
                bmc: self.name.clone(),
                operation: format!("boot from {target:?}"),
            });
        }
        Ok(())
    }

    async fn insert_media(&self, image_url: &str) -> Result<(), BmcError> {
        self.enter(FakeCall::InsertMedia(image_url.to_string())).await?;
        if !self.with(|s| s.capabilities.virtual_media) {
            return Err(BmcError::Unsupported {
                bmc: self.name.clone(),
                operation: "virtual media".into(),
            });
        }
        self.with(|s| s.media = Some(image_url.to_string()));
        Ok(())
    }

    async fn eject_media(&self) -> Result<(), BmcError> {
        self.enter(FakeCall::EjectMedia).await?;
        self.with(|s| s.media = None);
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BmcError> {
        self.enter(FakeCall::Inventory).await?;
        Ok(self.with(|s| s.inventory.clone()))
    }

    fn capabilities(&self) -> Capabilities {
        self.with(|s| s.capabilities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn auto_mode_lands_after_the_delay() {
        let bmc = FakeBmc::new("n0").with_mode(PowerMode::Auto {
            delay: Duration::from_secs(5),
        });
        bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
            .await
            .unwrap();
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
        assert_eq!(bmc.boots(), vec![BootTarget::Pxe { mode: BootMode::Uefi }]);
        assert_eq!(bmc.boot_override(), None, "a once override is consumed by the boot");
        // Idempotent: On when on changes nothing.
        bmc.set_power(PowerAction::On).await.unwrap();
        assert!(!bmc.transition_pending());
        bmc.set_power(PowerAction::Reset).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(bmc.boots().len(), 2);
        assert_eq!(bmc.boots()[1], BootTarget::Disk { mode: BootMode::Uefi });
    }

    #[tokio::test(start_paused = true)]
    async fn a_boot_hook_hears_each_boot_when_it_lands() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let bmc = FakeBmc::new("n5")
            .with_mode(PowerMode::Auto {
                delay: Duration::from_secs(3),
            })
            .on_boot(move |t| {
                let _ = tx.send(t);
            });
        bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
            .await
            .unwrap();
        bmc.set_power(PowerAction::On).await.unwrap();
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "not before the delay");
        // Nobody calls the BMC: the boot still happens at its time.
        let t = Instant::now();
        assert_eq!(rx.recv().await, Some(BootTarget::Pxe { mode: BootMode::Uefi }));
        assert_eq!(Instant::now() - t, Duration::from_secs(3));
        bmc.set_power(PowerAction::Reset).await.unwrap();
        assert_eq!(rx.recv().await, Some(BootTarget::Disk { mode: BootMode::Uefi }));
        bmc.set_power(PowerAction::Off).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err(), "powering off is no boot");
        // On, then Off and On again before the Off landed: the host still goes down and boots again.
        bmc.set_power(PowerAction::On).await.unwrap();
        assert!(rx.recv().await.is_some());
        bmc.set_power(PowerAction::Off).await.unwrap();
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(rx.recv().await, Some(BootTarget::Disk { mode: BootMode::Uefi }));
        assert_eq!(bmc.power(), PowerState::On);
    }

    #[tokio::test]
    async fn explicit_mode_waits_for_a_poke() {
        let bmc = FakeBmc::new("n1")
            .with_mode(PowerMode::Explicit)
            .with_power(PowerState::On);
        bmc.set_power(PowerAction::Off).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
        assert!(bmc.poke());
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        assert!(!bmc.poke());
        assert_eq!(
            bmc.calls(),
            vec![
                FakeCall::SetPower(PowerAction::Off),
                FakeCall::PowerState,
                FakeCall::PowerState
            ]
        );
    }

    #[tokio::test]
    async fn fails_the_next_n_calls() {
        let bmc = FakeBmc::new("n2");
        bmc.fail_next(2);
        assert!(bmc.power_state().await.unwrap_err().is_transient());
        assert!(bmc.inventory().await.is_err());
        assert!(bmc.inventory().await.is_ok());
        bmc.fail_next_with(1, || BmcError::AuthFailed {
            bmc: "n2".into(),
            username: "u".into(),
            detail: "x".into(),
        });
        assert!(!bmc.power_state().await.unwrap_err().is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn unresponsive_times_out() {
        let bmc = FakeBmc::new("n3").with_timeout(Duration::from_secs(10));
        bmc.set_unresponsive(true);
        let start = Instant::now();
        let e = bmc.power_state().await.unwrap_err();
        assert!(matches!(e, BmcError::Timeout { .. }));
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        bmc.set_unresponsive(false);
        assert!(bmc.power_state().await.is_ok());
    }

    #[tokio::test]
    async fn media_and_capabilities() {
        let bmc = FakeBmc::new("n4");
        bmc.insert_media("http://x/iso").await.unwrap();
        assert_eq!(bmc.media().as_deref(), Some("http://x/iso"));
        bmc.eject_media().await.unwrap();
        assert_eq!(bmc.media(), None);
        let bmc = bmc.with_capabilities(Capabilities {
            virtual_media: false,
            uefi_http_boot: false,
            inventory: true,
        });
        assert!(matches!(bmc.insert_media("u").await, Err(BmcError::Unsupported { .. })));
        assert!(matches!(
            bmc.set_boot(BootTarget::UefiHttp, BootPersistence::Once).await,
            Err(BmcError::Unsupported { .. })
        ));
    }
}
