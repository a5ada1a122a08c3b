use super::*;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 8080))
}

fn endpoints(n: u8) -> Vec<Endpoint> {
    (1..=n).map(|i| Endpoint::new(addr(i))).collect()
}

fn balancer(eps: &[Endpoint]) -> Balancer {
    Balancer::new(eps, &BalancerConfig::default(), None).seeded(7)
}

/// Picks `target` by excluding every other address.
fn pick_only(b: &Balancer, target: SocketAddr, now: Instant) -> Option<Pick> {
    let others: Vec<_> = b.addresses().into_iter().filter(|a| *a != target).collect();
    b.pick_at(&others, now)
}

fn just_before(t: Instant) -> Instant {
    t.checked_sub(Duration::from_millis(1)).unwrap()
}

fn state_of(b: &Balancer, a: SocketAddr, now: Instant) -> EndpointStats {
    b.stats_at(now).into_iter().find(|s| s.addr == a).unwrap()
}

/// Counts, per address, where `n` picks at `now` land (each released at once).
fn spread(b: &Balancer, n: usize, now: Instant) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(b.pick_at(&[], now).unwrap().addr())
            .or_default() += 1;
    }
    counts
}

#[test]
fn p2c_prefers_the_faster_endpoint() {
    let b = balancer(&endpoints(3));
    let t0 = Instant::now();
    // One sample a second for 30 s: time-weighted EWMA needs time to move.
    for s in 1..=30 {
        let at = t0 + Duration::from_secs(s);
        for (n, ms) in [(1, 1), (2, 20), (3, 50)] {
            pick_only(&b, addr(n), at)
                .unwrap()
                .success_at(at + Duration::from_millis(ms));
        }
    }
    let now = t0 + Duration::from_secs(31);
    let rtt = |n| state_of(&b, addr(n), now).ewma_rtt;
    assert!(rtt(1) < Duration::from_millis(5), "{:?}", rtt(1));
    assert!(rtt(3) >= Duration::from_millis(40), "{:?}", rtt(3));
    let counts = spread(&b, 3000, now);
    // The fastest wins every pair it is in (2/3 of pairs); the slowest none.
    assert!(counts[&addr(1)] > 1900, "{counts:?}");
    assert_eq!(counts.get(&addr(3)), None, "{counts:?}");
}

#[test]
fn p2c_prefers_the_less_loaded_endpoint() {
    let b = balancer(&endpoints(2));
    let now = Instant::now();
    let _held: Vec<_> = (0..3)
        .map(|_| pick_only(&b, addr(1), now).unwrap())
        .collect();
    assert_eq!(state_of(&b, addr(1), now).outstanding, 3);
    let counts = spread(&b, 500, now);
    assert_eq!(counts.get(&addr(2)), Some(&500), "{counts:?}");
    // Holding picks spreads them: outstanding counts stay within one.
    let held: Vec<_> = (0..10).map(|_| b.pick_at(&[], now).unwrap()).collect();
    let on_2 = held.iter().filter(|p| p.addr() == addr(2)).count();
    assert!((6..=7).contains(&on_2), "{on_2}");
}

#[test]
fn weights_split_traffic_in_proportion() {
    let eps = [
        Endpoint {
            generation: 0,
            addr: addr(1),
            weight: 9.0,
        },
        Endpoint {
            generation: 0,
            addr: addr(2),
            weight: 1.0,
        },
    ];
    let b = balancer(&eps);
    let counts = spread(&b, 2000, Instant::now());
    let heavy = counts[&addr(1)];
    assert!((1700..=1900).contains(&heavy), "{counts:?}");

    // Classes of several members: 2 × 3 against 4 × 1 gives 60/40.
    let eps: Vec<_> = (1..=6)
        .map(|i| Endpoint {
            generation: 0,
            addr: addr(i),
            weight: if i <= 2 { 3.0 } else { 1.0 },
        })
        .collect();
    let b = balancer(&eps);
    let counts = spread(&b, 4000, Instant::now());
    let heavy = counts[&addr(1)] + counts[&addr(2)];
    assert!((2200..=2600).contains(&heavy), "{counts:?}");
}

#[test]
fn invalid_weights_count_as_one_and_duplicates_are_dropped() {
    let eps = [
        Endpoint {
            generation: 0,
            addr: addr(1),
            weight: 0.0,
        },
        Endpoint {
            generation: 0,
            addr: addr(2),
            weight: f64::NAN,
        },
        Endpoint {
            generation: 0,
            addr: addr(3),
            weight: -2.0,
        },
        Endpoint {
            generation: 0,
            addr: addr(1),
            weight: 5.0,
        },
    ];
    let b = balancer(&eps);
    assert_eq!(b.len(), 3);
    assert_eq!(b.addresses(), vec![addr(1), addr(2), addr(3)]);
    let counts = spread(&b, 3000, Instant::now());
    assert!(
        counts.values().all(|&c| (800..=1200).contains(&c)),
        "{counts:?}"
    );

    let empty = balancer(&[]);
    assert!(empty.is_empty());
    assert!(empty.pick(&[]).is_none());
    assert_eq!(empty.available(), 0);
}

#[test]
fn excluded_addresses_are_never_picked() {
    let b = balancer(&endpoints(5));
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..300 {
        let exclude: Vec<_> = (1..=5).filter(|_| rng.bool()).map(addr).collect();
        match b.pick_at(&exclude, now) {
            Some(p) => assert!(!exclude.contains(&p.addr())),
            None => assert_eq!(exclude.len(), 5),
        }
    }
    assert!(b.pick_at(&b.addresses(), now).is_none());
    let all_but_4: Vec<_> = [1, 2, 3, 5].map(addr).to_vec();
    assert!((0..50).all(|_| b.pick_at(&all_but_4, now).unwrap().addr() == addr(4)));
}

#[test]
fn failure_accrual_removes_backs_off_and_probes() {
    let b = balancer(&endpoints(2));
    let (a, other) = (addr(1), addr(2));
    let t0 = Instant::now();
    let fail = |at: Instant| pick_only(&b, a, at).unwrap().failure_at(at);

    // Four failures, then a success: the count starts over.
    for _ in 0..4 {
        fail(t0);
    }
    assert_eq!(state_of(&b, a, t0).consecutive_failures, 4);
    pick_only(&b, a, t0).unwrap().success_at(t0);
    assert_eq!(state_of(&b, a, t0).consecutive_failures, 0);
    assert_eq!(state_of(&b, a, t0).state, EndpointState::Live);

    // Five in a row remove it for backoff_min plus up to 50 % jitter.
    for _ in 0..5 {
        fail(t0);
    }
    let EndpointState::Removed { until } = state_of(&b, a, t0).state else {
        panic!("not removed")
    };
    let backoff = until - t0;
    assert!(
        backoff >= Duration::from_secs(5) && backoff <= Duration::from_millis(7500),
        "{backoff:?}"
    );
    assert_eq!(b.removals(), 1);

    // Skipped until then.
    let before = just_before(until);
    assert!((0..200).all(|_| b.pick_at(&[], before).unwrap().addr() == other));
    assert!(pick_only(&b, a, before).is_none());
    assert_eq!(b.available_at(before), 1);
    assert_eq!(b.available_at(until), 2);

    // Then one probe, taken by the first pick that draws it.
    let probe = b.pick_at(&[], until).unwrap();
    assert_eq!(probe.addr(), a);
    assert!(probe.is_probe());
    assert_eq!(state_of(&b, a, until).state, EndpointState::Probing);
    assert!(pick_only(&b, a, until).is_none());
    assert!((0..200).all(|_| b.pick_at(&[], until).unwrap().addr() == other));
    assert_eq!(b.available_at(until), 1);

    // A failed probe removes it again, for twice as long.
    probe.failure_at(until);
    let EndpointState::Removed { until: until2 } = state_of(&b, a, until).state else {
        panic!("not removed again")
    };
    let backoff = until2 - until;
    assert!(
        backoff >= Duration::from_secs(10) && backoff <= Duration::from_secs(15),
        "{backoff:?}"
    );
    assert_eq!(b.removals(), 2);
    assert!(pick_only(&b, a, just_before(until2)).is_none());

    // A successful probe revives it, and it takes traffic again.
    let probe = pick_only(&b, a, until2).unwrap();
    assert!(probe.is_probe());
    probe.success_at(until2 + Duration::from_millis(2));
    let s = state_of(&b, a, until2);
    assert_eq!((s.state, s.consecutive_failures), (EndpointState::Live, 0));
    let counts = spread(&b, 200, until2 + Duration::from_millis(2));
    assert!(counts[&a] > 100, "{counts:?}");

    // The backoff started over: the next removal is short again.
    let t1 = until2 + Duration::from_secs(1);
    for _ in 0..5 {
        fail(t1);
    }
    let EndpointState::Removed { until } = state_of(&b, a, t1).state else {
        panic!("not removed")
    };
    assert!(until - t1 <= Duration::from_millis(7500));
}

#[test]
fn a_cancelled_probe_lets_the_next_request_probe() {
    let b = balancer(&endpoints(1));
    let t0 = Instant::now();
    for _ in 0..5 {
        b.pick_at(&[], t0).unwrap().failure_at(t0);
    }
    let late = t0 + Duration::from_secs(400);
    let probe = b.pick_at(&[], late).unwrap();
    assert!(b.pick_at(&[], late).is_none());
    drop(probe);
    let s = state_of(&b, addr(1), late);
    assert!(matches!(s.state, EndpointState::Removed { .. }));
    assert_eq!(s.outstanding, 0);
    assert!(b.pick_at(&[], late).unwrap().is_probe());
}

#[test]
fn all_dead_and_none_due_for_a_probe_is_none() {
    let b = balancer(&endpoints(2));
    let t0 = Instant::now();
    for n in 1..=2 {
        for _ in 0..5 {
            pick_only(&b, addr(n), t0).unwrap().failure_at(t0);
        }
    }
    assert_eq!(b.available_at(t0), 0);
    assert!(b.pick_at(&[], t0).is_none());
    let first_due = b
        .stats_at(t0)
        .iter()
        .filter_map(|s| match s.state {
            EndpointState::Removed { until } => Some(until),
            _ => None,
        })
        .min()
        .unwrap();
    assert!(b.pick_at(&[], just_before(first_due)).is_none());
    assert!(b.pick_at(&[], first_due).unwrap().is_probe());
    assert_eq!(b.removals(), 2);
}

#[test]
fn stale_results_do_not_remove_twice_and_a_stale_success_revives() {
    let b = balancer(&endpoints(1));
    let t0 = Instant::now();
    let stale: Vec<_> = (0..3).map(|_| b.pick_at(&[], t0).unwrap()).collect();
    for _ in 0..5 {
        b.pick_at(&[], t0).unwrap().failure_at(t0);
    }
    let mut stale = stale.into_iter();
    stale.next().unwrap().failure_at(t0);
    assert_eq!(b.removals(), 1);
    drop(stale.next());
    stale.next().unwrap().success_at(t0);
    assert_eq!(state_of(&b, addr(1), t0).state, EndpointState::Live);
    assert_eq!(b.available_at(t0), 1);
}

#[test]
fn statistics_carry_over_for_surviving_addresses() {
    let cfg = BalancerConfig::default();
    let b1 = Balancer::new(&endpoints(2), &cfg, None);
    let t0 = Instant::now();
    pick_only(&b1, addr(1), t0)
        .unwrap()
        .success_at(t0 + Duration::from_millis(80));
    for _ in 0..5 {
        pick_only(&b1, addr(2), t0).unwrap().failure_at(t0);
    }
    let held = pick_only(&b1, addr(1), t0).unwrap();
    let before = state_of(&b1, addr(1), t0);

    // Address 2 goes away, 3 arrives.
    let eps = [Endpoint::new(addr(1)), Endpoint::new(addr(3))];
    let b2 = Balancer::new(&eps, &cfg, Some(&b1));
    assert_eq!(b2.addresses(), vec![addr(1), addr(3)]);
    assert_eq!(state_of(&b2, addr(1), t0), before);
    assert_eq!(before.outstanding, 1);
    assert_eq!(before.ewma_rtt, Duration::from_millis(80));
    let fresh = state_of(&b2, addr(3), t0);
    assert_eq!((fresh.outstanding, fresh.consecutive_failures), (0, 0));
    assert!(fresh.ewma_rtt <= Duration::from_millis(30));
    assert_eq!(b2.removals(), 1);

    // A pick from the old balancer finishes into the shared state.
    held.success_at(t0);
    assert_eq!(state_of(&b2, addr(1), t0).outstanding, 0);

    // A removed address that comes back later starts fresh.
    let b3 = Balancer::new(&endpoints(2), &cfg, Some(&b2));
    let back = state_of(&b3, addr(2), t0);
    assert_eq!(
        (back.state, back.consecutive_failures),
        (EndpointState::Live, 0)
    );
}

#[test]
fn peak_ewma_jumps_up_and_decays() {
    let b = balancer(&endpoints(1));
    let t0 = Instant::now();
    let rtt = |at| state_of(&b, addr(1), at).ewma_rtt.as_secs_f64();
    b.pick_at(&[], t0)
        .unwrap()
        .success_at(t0 + Duration::from_millis(200));
    let t1 = t0 + Duration::from_millis(200);
    assert!((rtt(t1) - 0.2).abs() < 1e-9);
    // Idle for one decay period: e^-1 of the estimate.
    assert!((rtt(t1 + Duration::from_secs(10)) - 0.2 * (-1f64).exp()).abs() < 1e-9);
    // A faster sample ten seconds later weighs 1 − e^-1.
    let t2 = t1 + Duration::from_secs(10);
    b.pick_at(&[], t2).unwrap().success_at(t2);
    let expect = 0.2 * (-1f64).exp();
    assert!((rtt(t2) - expect).abs() < 1e-9, "{} vs {expect}", rtt(t2));
    // A failure is charged at least twice the estimate.
    b.pick_at(&[], t2).unwrap().failure_at(t2);
    assert!((rtt(t2) - 2.0 * expect).abs() < 1e-9);
}

#[test]
fn backoff_doubles_within_bounds() {
    let s = Settings::new(&BalancerConfig::default());
    for n in 1..=40 {
        let base = (5.0 * 2f64.powi(n - 1)).min(300.0);
        for u in [0.0, 0.3, 0.999_999] {
            let d = s.backoff(n.unsigned_abs(), u).as_secs_f64();
            assert!((5.0..=300.0).contains(&d), "n={n} u={u}: {d}");
            if base * 1.5 <= 300.0 {
                assert!(d >= base && d <= base * 1.5, "n={n} u={u}: {d}");
            } else {
                assert!(d >= 150.0, "n={n} u={u}: {d}");
            }
        }
    }
    let mut cfg = BalancerConfig::default();
    cfg.failure_accrual.jitter = 0.0;
    let s = Settings::new(&cfg);
    let seq: Vec<_> = (1..=8).map(|n| s.backoff(n, 0.7).as_secs()).collect();
    assert_eq!(seq, [5, 10, 20, 40, 80, 160, 300, 300]);
}

#[test]
fn accrual_can_be_disabled() {
    let mut cfg = BalancerConfig::default();
    cfg.failure_accrual.consecutive_failures = 0;
    let b = Balancer::new(&endpoints(1), &cfg, None);
    let now = Instant::now();
    for _ in 0..50 {
        b.pick_at(&[], now).unwrap().failure_at(now);
    }
    assert_eq!(state_of(&b, addr(1), now).state, EndpointState::Live);
    assert_eq!(b.removals(), 0);
}

#[test]
fn concurrent_picks_release_their_load() {
    let b = Arc::new(Balancer::new(
        &endpoints(8),
        &BalancerConfig::default(),
        None,
    ));
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let b = Arc::clone(&b);
            s.spawn(move || {
                for i in 0..2000u32 {
                    // Failures may remove every endpoint for a while.
                    let Some(p) = b.pick(&[addr(t + 1)]) else {
                        continue;
                    };
                    assert_ne!(p.addr(), addr(t + 1));
                    match i % 3 {
                        0 => p.success(),
                        1 => drop(p),
                        _ => p.failure(),
                    }
                }
            });
        }
    });
    assert!(b.stats().iter().all(|s| s.outstanding == 0));
}

#[test]
fn a_new_generation_at_an_address_starts_fresh() {
    let t0 = Instant::now();
    let a = addr(1);
    let b = Balancer::new(&[Endpoint::new(a)], &BalancerConfig::default(), None);
    for _ in 0..5 {
        b.pick_at(&[], t0).unwrap().failure_at(t0);
    }
    assert!(matches!(
        b.stats_at(t0)[0].state,
        EndpointState::Removed { .. }
    ));
    // The same task: its removal carries over.
    let same = Balancer::new(&[Endpoint::new(a)], &BalancerConfig::default(), Some(&b));
    assert!(matches!(
        same.stats_at(t0)[0].state,
        EndpointState::Removed { .. }
    ));
    // Another task at the same address: fresh statistics.
    let replaced = Endpoint {
        generation: 7,
        ..Endpoint::new(a)
    };
    let fresh = Balancer::new(&[replaced], &BalancerConfig::default(), Some(&b));
    let s = &fresh.stats_at(t0)[0];
    assert_eq!((s.state, s.consecutive_failures), (EndpointState::Live, 0));
    assert!(fresh.pick_at(&[], t0).is_some());
}

fn with(cfg: BalancerConfig, n: u8) -> Balancer {
    Balancer::new(&endpoints(n), &cfg, None).seeded(11)
}

#[test]
fn round_robin_takes_turns_and_skips_what_is_not_eligible() {
    let b = with(
        BalancerConfig {
            strategy: Strategy::RoundRobin,
            ..BalancerConfig::default()
        },
        3,
    );
    let now = Instant::now();
    // Latency does not matter: each in turn.
    pick_only(&b, addr(1), now)
        .unwrap()
        .success_at(now + Duration::from_secs(2));
    let counts = spread(&b, 300, now);
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
    let order: Vec<_> = (0..6)
        .map(|_| b.pick_at(&[], now).unwrap().addr())
        .collect();
    assert_eq!(order[..3], order[3..]);
    // Excluded ones are skipped, the turn goes on.
    assert!((0..20).all(|_| b.pick_at(&[addr(2)], now).unwrap().addr() != addr(2)));
    // Removed ones too.
    for _ in 0..5 {
        pick_only(&b, addr(3), now).unwrap().failure_at(now);
    }
    let counts = spread(&b, 100, now);
    assert_eq!(counts.get(&addr(3)), None);
    assert_eq!(counts[&addr(1)], 50);
}

#[test]
fn least_requests_prefers_fewer_in_flight_whatever_the_latency() {
    let b = with(
        BalancerConfig {
            strategy: Strategy::LeastRequests,
            ..BalancerConfig::default()
        },
        2,
    );
    let now = Instant::now();
    // Endpoint 1 is slow but idle; endpoint 2 fast with one in flight.
    pick_only(&b, addr(1), now)
        .unwrap()
        .success_at(now + Duration::from_secs(1));
    let held = pick_only(&b, addr(2), now).unwrap();
    assert!((0..50).all(|_| b.pick_at(&[], now).unwrap().addr() == addr(1)));
    drop(held);
    // Peak EWMA would choose the other way.
    let ewma = balancer(&endpoints(2));
    pick_only(&ewma, addr(1), now)
        .unwrap()
        .success_at(now + Duration::from_secs(1));
    let _held = pick_only(&ewma, addr(2), now).unwrap();
    assert!((0..50).all(|_| ewma.pick_at(&[], now).unwrap().addr() == addr(2)));
}

#[test]
fn max_concurrent_caps_requests_in_flight() {
    for strategy in [
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::LeastRequests,
    ] {
        let b = with(
            BalancerConfig {
                strategy,
                max_concurrent: 2,
                ..BalancerConfig::default()
            },
            2,
        );
        let now = Instant::now();
        assert!(!b.at_capacity(&[]));
        let held: Vec<_> = (0..4).map(|_| b.pick_at(&[], now).unwrap()).collect();
        assert!(b.pick_at(&[], now).is_none(), "{strategy:?}");
        assert!(b.at_capacity(&[]));
        assert!(b.stats().iter().all(|s| s.outstanding == 2));
        drop(held);
        assert!(!b.at_capacity(&[]));
        assert!(b.pick_at(&[], now).is_some());
    }
    // Concurrent picks never pass the limit.
    let b = Arc::new(with(
        BalancerConfig {
            max_concurrent: 3,
            ..BalancerConfig::default()
        },
        1,
    ));
    let peak = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
            s.spawn(move || {
                for _ in 0..2000 {
                    if let Some(p) = b.pick(&[]) {
                        peak.fetch_max(b.stats()[0].outstanding, Ordering::Relaxed);
                        p.success();
                    }
                }
            });
        }
    });
    assert!(peak.load(Ordering::Relaxed) <= 3);
    assert_eq!(b.stats()[0].outstanding, 0);
}

#[test]
fn success_rate_accrual_removes_below_the_rate_over_its_window() {
    let cfg = BalancerConfig {
        failure_accrual: AccrualConfig {
            success_rate: Some(SuccessRateAccrual {
                rate: 0.8,
                requests: 10,
            }),
            ..AccrualConfig::default()
        },
        ..BalancerConfig::default()
    };
    let b = with(cfg, 2);
    let a = addr(1);
    let t0 = Instant::now();
    // Alternating outcomes: never 5 failures in a row, yet 50 % success.
    for i in 0..9 {
        let p = pick_only(&b, a, t0).unwrap();
        if i % 2 == 0 {
            p.success_at(t0);
        } else {
            p.failure_at(t0);
        }
    }
    // The window is not full yet: still live.
    assert_eq!(state_of(&b, a, t0).state, EndpointState::Live);
    pick_only(&b, a, t0).unwrap().failure_at(t0);
    assert!(matches!(
        state_of(&b, a, t0).state,
        EndpointState::Removed { .. }
    ));
    assert_eq!(b.removals(), 1);

    // 8 of 10 succeed: at the rate, kept; consecutive failures do not count.
    let other = addr(2);
    for i in 0..30 {
        let p = pick_only(&b, other, t0).unwrap();
        if i % 5 == 0 {
            p.failure_at(t0);
        } else {
            p.success_at(t0);
        }
    }
    assert_eq!(state_of(&b, other, t0).state, EndpointState::Live);

    // A revived endpoint starts a fresh window.
    let late = t0 + Duration::from_mins(1);
    pick_only(&b, a, late).unwrap().success_at(late);
    assert_eq!(state_of(&b, a, late).state, EndpointState::Live);
    for _ in 0..2 {
        pick_only(&b, a, late).unwrap().failure_at(late);
    }
    assert_eq!(state_of(&b, a, late).state, EndpointState::Live);
}
