//! Atoms the NIF sends. None is ever made from worker data. Map keys of the
//! structs in `terms.rs` are made by `#[derive(NifMap)]` from field names,
//! and those of `pool_stats/1` also from the field names of the dispatcher's
//! gauges and counters.

rustler::atoms! {
    ok,
    error,
    nil,
    true_ = "true",
    false_ = "false",
    nan,
    infinity,
    neg_infinity,
    msgpack_ext,
    msgpack,
    // replies: {tag, :result | :done | :python_error | :validation_error, frame, body_offset, meta},
    // {tag, :chunk, frame, body_offset}, {tag, :error, reason}
    result,
    python_error,
    validation_error,
    chunk,
    done,
    // session affinities
    strict,
    hint,
    fail_fast,
    session_lost,
    new_session,
    session_id,
    retryable,
    // circuit states
    closed,
    open,
    half_open,
    circuit,
    snakepit_circuit,
    snakepit_reclaim,
    // submit/cancel/expire/dequeue
    dirty,
    dequeued,
    pending,
    started,
    cancelled,
    replied,
    running,
    killed,
    // error categories
    worker,
    transport,
    pool,
    validation,
    // worker events: {:snakepit_worker, id, event, data}
    snakepit_worker,
    ready,
    startup_error,
    exit,
    stderr,
    log,
    dropped_output,
    // Python calls Elixir (see elixir.rs)
    snakepit_elixir_call,
    snakepit_elixir_cancel,
    snakepit_elixir_down,
    stale,
    // worker states
    starting,
    idle,
    busy,
    stopping,
}
