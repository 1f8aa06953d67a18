//! Model checks of the engine's decisions: every reachable journal state of a
//! small plan, and random runs with crashes, against a simulated world.

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;

use super::decide::{Action, Mode, Seen, decide};
use super::event::{EventKind, PlannedStep};
use super::state::{PlanState, StepPhase};

fn plan(n: usize) -> Vec<PlannedStep> {
    (0..n)
        .map(|i| PlannedStep {
            id: format!("s{i}"),
            title: format!("step {i}"),
        })
        .collect()
}

fn id(i: usize) -> String {
    format!("s{i}")
}

/// The events the runner writes for `action`, given how its operations turn out.
/// `ok` is the outcome of the operation(s) the action runs (capture, verify,
/// ensure+verify, undo).
fn events_for(state: &PlanState, action: &Action, ok: bool) -> Vec<EventKind> {
    let attempt = |i: usize| state.steps[i].attempts;
    let failed = |i: usize| EventKind::StepFailed {
        step: id(i),
        attempt: attempt(i),
        error: "x".into(),
    };
    match *action {
        Action::StartAttempt { step, attempt } => vec![EventKind::StepStarted {
            step: id(step),
            attempt,
        }],
        Action::SaveRollback { step } if ok => vec![EventKind::RollbackSaved { step: id(step) }],
        Action::SaveRollback { step } => vec![failed(step)],
        Action::Observe { .. } if ok => vec![],
        Action::Observe { step } => vec![failed(step)],
        Action::Ensure { step } if ok => vec![EventKind::StepVerified { step: id(step) }],
        Action::Ensure { step } => vec![failed(step)],
        Action::MarkVerified { step } => vec![EventKind::StepVerified { step: id(step) }],
        Action::StartRollback { step } => vec![EventKind::RollbackStarted { step: id(step) }],
        Action::Undo { step } if ok => vec![EventKind::RolledBack { step: id(step) }],
        Action::Undo { step } => vec![EventKind::RollbackFailed {
            step: id(step),
            error: "x".into(),
        }],
        Action::ForgetUnchanged { step } => vec![EventKind::RolledBack { step: id(step) }],
        Action::Refuse { .. } | Action::Done => vec![],
    }
}

fn apply_all(state: &PlanState, events: &[EventKind]) -> PlanState {
    let mut next = state.clone();
    for e in events {
        next.apply(e)
            .unwrap_or_else(|err| panic!("runner would write an impossible event {e:?}: {err}"));
    }
    next
}

fn modes(n: usize) -> Vec<Mode> {
    let mut m = vec![Mode::Apply];
    m.extend((0..n).map(|down_to| Mode::Rollback { down_to }));
    m
}

/// Properties every decision must have, whatever the state.
fn check_decision(state: &PlanState, mode: Mode, seen: Option<Seen>, action: &Action) {
    let phase = |i: usize| state.steps[i].phase;
    match (mode, action) {
        (Mode::Apply, Action::Refuse { .. }) => assert!(
            state
                .steps
                .iter()
                .any(|s| matches!(s.phase, StepPhase::RollingBack | StepPhase::RollbackFailed))
        ),
        (Mode::Apply, Action::Done) => assert!(state.complete()),
        (Mode::Apply, a) => {
            let i = a.step().expect("apply actions name a step");
            assert!(
                (0..i).all(|j| phase(j) == StepPhase::Verified),
                "{a:?} skips an unverified step"
            );
            assert_ne!(phase(i), StepPhase::Verified, "{a:?} on a verified step");
            if let Action::Ensure { step } = a {
                assert!(
                    state.steps[*step].rollback_saved,
                    "acting before rollback data is saved"
                );
                assert_eq!(
                    seen,
                    Some(Seen {
                        step: *step,
                        satisfied: false
                    }),
                    "acting without observing first"
                );
            }
            if let Action::MarkVerified { step } = a {
                assert_eq!(
                    seen,
                    Some(Seen {
                        step: *step,
                        satisfied: true
                    })
                );
            }
        }
        (Mode::Rollback { down_to }, Action::Done) => {
            assert!(
                state.steps[down_to..]
                    .iter()
                    .all(|s| matches!(s.phase, StepPhase::Pending | StepPhase::RolledBack))
            );
        }
        (Mode::Rollback { down_to }, a) => {
            let i = a.step().expect("rollback actions name a step");
            assert!(i >= down_to, "{a:?} goes below --to");
            assert!(
                state.steps[i + 1..]
                    .iter()
                    .all(|s| matches!(s.phase, StepPhase::Pending | StepPhase::RolledBack)),
                "{a:?} before later steps are undone"
            );
            if let Action::Undo { step } = a {
                assert!(state.steps[*step].rollback_saved, "undo without saved data");
            }
            assert!(!matches!(
                a,
                Action::Ensure { .. } | Action::StartAttempt { .. }
            ));
        }
    }
}

/// Breadth-first over every journal state reachable from a fresh plan of three
/// steps, through every mode, observation and outcome.
#[test]
fn every_reachable_state_decides_safely() {
    let n = 3;
    let start = PlanState::new(&plan(n));
    let mut seen_states: HashSet<String> = HashSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(state) = queue.pop_front() {
        // Attempt counts grow without bound through failures; two retries show every shape.
        let key = format!("{:?}", state.steps);
        if state.steps.iter().any(|s| s.attempts > 3) || !seen_states.insert(key) {
            continue;
        }
        let observations: Vec<Option<Seen>> = std::iter::once(None)
            .chain(
                (0..n)
                    .flat_map(|step| [true, false].map(|satisfied| Some(Seen { step, satisfied }))),
            )
            .collect();
        for mode in modes(n) {
            for &seen in &observations {
                let action = decide(&state, mode, seen);
                // An observation of another step must not change the decision.
                if let Some(s) = seen {
                    let current = decide(&state, mode, None).step();
                    if current != Some(s.step) {
                        assert_eq!(action, decide(&state, mode, None));
                    }
                }
                check_decision(&state, mode, seen, &action);
                for ok in [true, false] {
                    let next = apply_all(&state, &events_for(&state, &action, ok));
                    queue.push_back(next);
                }
            }
        }
    }
    // Each of 3 steps can be in several phases with a few attempt counts: the
    // search must have covered far more than the happy path.
    assert!(
        seen_states.len() > 100,
        "only {} states reached",
        seen_states.len()
    );
}

/// A simulated world: whether each step's change is in place.
#[derive(Debug, Clone, Default)]
struct World {
    applied: Vec<bool>,
    ensure_after_verified: u32,
    verified_once: Vec<bool>,
}

/// Run decide to the end (or `budget` actions) with the runner's semantics;
/// `fail` says whether the k-th operation fails.
fn drive(
    state: &mut PlanState,
    world: &mut World,
    mode: Mode,
    budget: usize,
    fail: &mut dyn FnMut() -> bool,
) -> Option<Action> {
    let mut seen = None;
    for _ in 0..budget {
        let observed = seen.take();
        let action = decide(state, mode, observed);
        check_decision(state, mode, observed, &action);
        // Journal-only actions cannot fail; the others run an operation that may.
        let journal_only = matches!(
            action,
            Action::StartAttempt { .. }
                | Action::MarkVerified { .. }
                | Action::StartRollback { .. }
                | Action::ForgetUnchanged { .. }
        );
        let ok = journal_only || !fail();
        match action {
            Action::Done | Action::Refuse { .. } => return Some(action),
            Action::Observe { step } if ok => {
                if world.applied[step] {
                    world.verified_once[step] = true;
                }
                seen = Some(Seen {
                    step,
                    satisfied: world.applied[step],
                });
            }
            Action::Ensure { step } => {
                if world.verified_once[step] {
                    world.ensure_after_verified += 1;
                }
                if ok {
                    world.applied[step] = true;
                    world.verified_once[step] = true;
                }
            }
            Action::Undo { step } if ok => {
                world.applied[step] = false;
                world.verified_once[step] = false;
            }
            _ => {}
        }
        *state = apply_all(state, &events_for(state, &action, ok));
        if !ok {
            return None; // the runner stops at a failure
        }
    }
    None
}

proptest! {
    /// Random runs interrupted at random points (a crash loses the in-memory
    /// observation), with random failures, then resumed without failures: apply
    /// always completes, no step acts after its verify passed, and a full
    /// rollback afterwards leaves the world as it started.
    #[test]
    fn crashes_and_failures_never_break_resume(
        n in 1usize..5,
        segments in proptest::collection::vec((0usize..12, any::<bool>(), 0u8..4), 0..8),
        fail_bits in proptest::collection::vec(any::<bool>(), 64),
    ) {
        let mut state = PlanState::new(&plan(n));
        let mut world = World { applied: vec![false; n], verified_once: vec![false; n], ..Default::default() };
        let mut bits = fail_bits.into_iter().cycle();
        for (budget, rollback, down_to) in segments {
            let mode = if rollback { Mode::Rollback { down_to: (down_to as usize) % n } } else { Mode::Apply };
            drive(&mut state, &mut world, mode, budget, &mut || bits.next().unwrap_or(false));
        }
        // Finish any rollback in progress, then apply to the end without failures.
        let end = drive(&mut state, &mut world, Mode::Rollback { down_to: 0 }, 1000, &mut || false);
        prop_assert_eq!(end, Some(Action::Done));
        prop_assert!(world.applied.iter().all(|a| !a), "rollback left changes: {:?}", world.applied);
        let end = drive(&mut state, &mut world, Mode::Apply, 1000, &mut || false);
        prop_assert_eq!(end, Some(Action::Done));
        prop_assert!(state.complete());
        prop_assert!(world.applied.iter().all(|a| *a));
        prop_assert_eq!(world.ensure_after_verified, 0);
    }
}

#[test]
fn history_must_start_with_planned_and_have_no_gaps() {
    use super::event::Event;
    let ev = |seq, kind| Event {
        seq,
        at: String::new(),
        kind,
    };
    let planned = EventKind::Planned { steps: plan(2) };
    let started = EventKind::StepStarted {
        step: id(0),
        attempt: 1,
    };
    assert!(PlanState::from_events(&[]).is_err());
    assert!(PlanState::from_events(&[ev(1, started.clone())]).is_err());
    assert!(PlanState::from_events(&[ev(1, planned.clone()), ev(3, started.clone())]).is_err());
    let ok = PlanState::from_events(&[ev(1, planned.clone()), ev(2, started)]).unwrap();
    assert_eq!(ok.steps[0].phase, StepPhase::Started);
    // Verified without saved rollback data is not a history the runner writes.
    let bad = [
        ev(1, planned),
        ev(2, EventKind::StepVerified { step: id(0) }),
    ];
    assert!(PlanState::from_events(&bad).is_err());
}

#[test]
fn apply_refuses_while_a_rollback_is_unfinished() {
    let mut s = PlanState::new(&plan(2));
    for e in [
        EventKind::StepStarted {
            step: id(0),
            attempt: 1,
        },
        EventKind::RollbackSaved { step: id(0) },
        EventKind::StepVerified { step: id(0) },
        EventKind::RollbackStarted { step: id(0) },
    ] {
        s.apply(&e).unwrap();
    }
    assert!(matches!(
        decide(&s, Mode::Apply, None),
        Action::Refuse { .. }
    ));
    assert_eq!(
        decide(&s, Mode::Rollback { down_to: 0 }, None),
        Action::Undo { step: 0 }
    );
}

#[test]
fn a_failed_step_keeps_its_first_rollback_data() {
    let mut s = PlanState::new(&plan(1));
    for e in [
        EventKind::StepStarted {
            step: id(0),
            attempt: 1,
        },
        EventKind::RollbackSaved { step: id(0) },
        EventKind::StepFailed {
            step: id(0),
            attempt: 1,
            error: "boom".into(),
        },
    ] {
        s.apply(&e).unwrap();
    }
    assert_eq!(
        decide(&s, Mode::Apply, None),
        Action::StartAttempt {
            step: 0,
            attempt: 2
        }
    );
    s.apply(&EventKind::StepStarted {
        step: id(0),
        attempt: 2,
    })
    .unwrap();
    // Not captured again: the world may already be half-changed.
    assert_eq!(decide(&s, Mode::Apply, None), Action::Observe { step: 0 });
}
