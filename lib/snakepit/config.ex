defmodule Snakepit.Config do
  # The moduledoc is set further down, once the table of options it shows
  # has been defined.

  alias Snakepit.Error

  @max_frame_limit 0x7FFF_FFFF
  # The longest wait `receive ... after` and timers accept: 2^32 - 1 ms,
  # about 49.7 days. Every duration option is checked against it.
  @max_ms 4_294_967_295
  @circuit_defaults [threshold: 5, window: 10_000, cooldown: 5_000]

  # The shapes an option's value can take: the typespec of the validated
  # value, and the words that say what is expected (in error messages and in
  # the table of the moduledoc). Each shape has an accept/2 clause below.
  @shapes %{
    pool_name: {quote(do: atom()), "an atom"},
    # nil only in a pool that runs a :command.
    python_class:
      {quote(do: String.t() | module() | nil),
       ~s(a dotted Python path like "my_pkg.module.ClassName", or a module implementing Snakepit.Adapter)},
    command:
      {quote(do: [String.t(), ...] | nil),
       "nil, or a non-empty list of non-empty strings without NUL bytes: a program, then its arguments"},
    pos_integer: {quote(do: pos_integer()), "a positive integer"},
    pos_ms: {quote(do: pos_integer()), "a positive integer (milliseconds) up to 4_294_967_295"},
    non_neg_ms:
      {quote(do: non_neg_integer()), "a non-negative integer (milliseconds) up to 4_294_967_295"},
    pos_ms_or_infinity:
      {quote(do: pos_integer() | :infinity),
       "a positive integer or :infinity (milliseconds, up to 4_294_967_295)"},
    pos_or_infinity: {quote(do: pos_integer() | :infinity), "a positive integer or :infinity"},
    string: {quote(do: String.t()), "a non-empty string"},
    dir_list: {quote(do: [String.t()]), "a list of directory strings"},
    env:
      {quote(do: [{String.t(), String.t()}]), ~s(a list of {"NAME", "value"} string pairs or a map)},
    dir_or_nil: {quote(do: String.t() | nil), "a directory string or nil"},
    frame_size: {quote(do: pos_integer()), "an integer from 1 to #{@max_frame_limit}"},
    depth: {quote(do: 1..64), "an integer from 1 to 64"},
    concurrency: {quote(do: 1..1024), "an integer from 1 to 1024"},
    affinity: {quote(do: :strict | :hint | :fail_fast), "one of :strict, :hint, :fail_fast"},
    circuit:
      {quote(do: false | keyword()),
       "false, or [threshold: n, window: ms, cooldown: ms] (defaults 5, 10_000, 5_000)"},
    retry: {quote(do: false | keyword()), "false, or options of `Snakepit.Retry.run/2`"},
    window: {quote(do: 1..65_536), "an integer from 1 to 65_536"},
    elixir_tools:
      {quote(do: %{optional(String.t()) => Snakepit.ElixirTools.fun_spec()}),
       "a map of names (strings or atoms) to {module, function} or 1-arity functions"}
  }

  # THE table of pool options: everything else (the struct, its type,
  # validation, known_options/0, native_options/1 and the table in the
  # moduledoc) is derived from it. Fields:
  #   name    - the option
  #   shape   - a key of @shapes: its type and how it is checked
  #   default - a value; :required; or {:computed, {m, f, a}}, a default
  #             that depends on the machine, computed by validate/1
  #   doc     - one line for the moduledoc's table
  #   note    - (optional) words shown after the default in that table
  #   native  - (optional) true if native_options/1 passes it to the native
  #             pool; :infinity is passed as 0, "no limit"
  @options [
    %{
      name: :name,
      shape: :pool_name,
      default: :default,
      doc: "naming the pool in `Snakepit.execute/3`"
    },
    %{
      name: :adapter,
      shape: :python_class,
      default: :required,
      note: "unless `:command` is given",
      doc:
        "the Python class (a `snakepit_bridge.BaseAdapter`) workers run, or an Elixir module implementing `Snakepit.Adapter` (workers are then BEAM processes)"
    },
    %{
      name: :size,
      shape: :pos_integer,
      default: {:computed, {System, :schedulers_online, []}},
      native: true,
      doc: "number of worker processes"
    },
    %{
      name: :python,
      shape: :string,
      default: "python3",
      doc:
        "interpreter: a path, a name on the `PATH`, or a virtualenv's directory (runs its `bin/python`; see `Snakepit.Venv`)"
    },
    %{
      name: :python_path,
      shape: :dir_list,
      default: [],
      doc: "directories prepended to `PYTHONPATH`"
    },
    %{
      name: :command,
      shape: :command,
      default: nil,
      note: "the Python bridge",
      doc:
        "a program and its arguments (no shell) run as each worker instead of the Python bridge: any program that speaks `docs/protocol.md`; excludes `:adapter`, `:python`, `:python_path` (see \"Other languages\")"
    },
    %{name: :env, shape: :env, default: [], doc: "extra environment of the workers"},
    %{
      name: :cwd,
      shape: :dir_or_nil,
      default: nil,
      note: "the BEAM's cwd",
      doc: "working directory of the workers"
    },
    %{
      name: :max_frame_bytes,
      shape: :frame_size,
      default: 64 * 1024 * 1024,
      note: "64 MiB",
      native: true,
      doc: "largest message in either direction, blobs included; at most 2 GiB - 1"
    },
    %{
      name: :shm_threshold,
      shape: :pos_or_infinity,
      default: 4 * 1024 * 1024,
      note: "4 MiB",
      native: true,
      doc:
        "binaries and tensors this large cross in shared memory, not the pipe (see \"Shared memory\"); `:infinity`: never"
    },
    %{
      name: :shm_max_bytes,
      shape: :pos_integer,
      default: 4 * 1024 * 1024 * 1024,
      note: "4 GiB",
      native: true,
      doc: "most bytes of shared-memory segments the pool has in flight at once"
    },
    %{
      name: :startup_timeout,
      shape: :pos_ms,
      default: 30_000,
      doc: "ms to wait for the first worker's handshake"
    },
    %{
      name: :concurrency,
      shape: :concurrency,
      default: 1,
      native: true,
      doc: "calls one worker runs at once, on threads and one asyncio loop (see \"Concurrency\")"
    },
    %{
      name: :pipeline_depth,
      shape: :depth,
      default: 4,
      native: true,
      doc:
        "calls written to one worker at a time, counting one of its running calls: `:concurrency + :pipeline_depth - 1` at most (see \"Pipelining\")"
    },
    %{
      name: :reclaim_after,
      shape: :pos_ms_or_infinity,
      default: 50,
      doc:
        "ms a call may run before the calls written behind it are taken back for other workers; `:infinity`: never"
    },
    %{
      name: :timeout,
      shape: :pos_ms_or_infinity,
      default: 30_000,
      doc: "ms a call may take, queueing included, when the call gives no `:timeout`"
    },
    %{
      name: :queue_timeout,
      shape: :pos_ms_or_infinity,
      default: :infinity,
      doc: "ms a call may wait for a worker (per call too)"
    },
    %{
      name: :max_queue,
      shape: :pos_integer,
      default: 10_000,
      native: true,
      doc: "most calls waiting; past it calls fail at once"
    },
    %{
      name: :cancel_grace,
      shape: :non_neg_ms,
      default: 2_000,
      doc: "ms a worker gets to stop a cancelled call"
    },
    %{
      name: :heartbeat_interval,
      shape: :pos_ms_or_infinity,
      default: 5_000,
      doc: "ms between heartbeats, or `:infinity` for none"
    },
    %{
      name: :heartbeat_misses,
      shape: :pos_integer,
      default: 3,
      doc: "unanswered heartbeats in a row before a kill"
    },
    %{
      name: :max_requests,
      shape: :pos_or_infinity,
      default: :infinity,
      native: true,
      doc: "calls a worker serves before it is recycled"
    },
    %{
      name: :max_age,
      shape: :pos_ms_or_infinity,
      default: :infinity,
      native: true,
      doc: "ms a worker lives before it is recycled"
    },
    %{
      name: :max_memory_mb,
      shape: :pos_or_infinity,
      default: :infinity,
      native: true,
      doc: "resident memory (MiB) past which it is recycled"
    },
    %{
      name: :affinity,
      shape: :affinity,
      default: :strict,
      doc: "how a session's calls pick their worker (per call too; see `Snakepit`)"
    },
    %{
      name: :session_ttl,
      shape: :pos_ms_or_infinity,
      default: 1_800_000,
      note: "30 min",
      native: true,
      doc: "ms a session may stay idle before it is ended"
    },
    %{
      name: :max_sessions,
      shape: :pos_or_infinity,
      default: 10_000,
      native: true,
      doc: "most sessions at once; past it new sessions fail at once"
    },
    %{
      name: :stream_window,
      shape: :window,
      default: 32,
      doc: "chunks a stream may send ahead of its consumer (per call too)"
    },
    %{
      name: :circuit_breaker,
      shape: :circuit,
      default: false,
      doc: "fail calls at once after repeated worker failures (see `Snakepit`)"
    },
    %{
      name: :retry,
      shape: :retry,
      default: false,
      doc: "retry calls that never started, with backoff (per call too)"
    },
    %{
      name: :elixir_tools,
      shape: :elixir_tools,
      default: %{},
      doc:
        "Elixir functions the tools may call with `ctx.call_elixir` (see `Snakepit.ElixirTools`; more with `Snakepit.register_tool/3`)"
    },
    %{
      name: :elixir_tool_timeout,
      shape: :pos_ms,
      default: 5_000,
      doc: "ms such a function may run when `ctx.call_elixir` gives no `_timeout`"
    },
    %{
      name: :startup_batch_size,
      shape: :pos_integer,
      default: 8,
      doc: "workers starting at the same time"
    },
    %{
      name: :max_start_failures,
      shape: :pos_integer,
      default: 5,
      doc: "failed starts in a row before the pool gives up"
    },
    %{
      name: :shutdown_timeout,
      shape: :non_neg_ms,
      default: 5_000,
      doc: "ms stopping waits for running calls"
    }
  ]

  @options Enum.map(@options, &Map.merge(%{note: nil, native: false}, &1))

  for %{name: name, shape: shape} <- @options, not Map.has_key?(@shapes, shape) do
    raise CompileError,
      description: "pool option #{inspect(name)} has an unknown shape #{inspect(shape)}"
  end

  @known Enum.map(@options, & &1.name)
  @required for %{name: name, default: :required} <- @options, do: name
  @computed for %{name: name, default: {:computed, mfa}} <- @options, do: {name, mfa}
  @native for %{name: name, native: true} <- @options, do: name
  @max_native 0x7FFF_FFFF_FFFF_FFFF
  @shape_of Map.new(@options, &{&1.name, &1.shape})
  @expected Map.new(@shapes, fn {shape, {_type, expected}} -> {shape, expected} end)

  # The moduledoc's table, padded so that it also reads well as plain text.
  show = fn
    n when is_integer(n) and n >= 1_000 ->
      String.replace(Integer.to_string(n), ~r/\B(?=(\d{3})+$)/, "_")

    value ->
      inspect(value)
  end

  rows =
    for %{name: name, shape: shape, default: default, note: note, doc: doc} <- @options do
      default_text =
        case default do
          :required when is_nil(note) -> "required"
          :required -> "required #{note}"
          {:computed, {m, f, a}} -> "`#{Exception.format_mfa(m, f, a)}`, when validated"
          value when is_nil(note) -> "`#{show.(value)}`"
          value -> "`#{show.(value)}` (#{note})"
        end

      ["`#{inspect(name)}`", default_text, @expected[shape], doc]
    end

  header = ["option", "default", "accepts", "meaning"]

  widths =
    for column <- Enum.zip([header | rows]),
        do: column |> Tuple.to_list() |> Enum.map(&String.length/1) |> Enum.max()

  format_row = fn cells ->
    padded = Enum.zip_with(cells, widths, &String.pad_trailing/2)
    "| " <> Enum.join(padded, " | ") <> " |"
  end

  rule = "|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|"
  @options_table Enum.join([format_row.(header), rule | Enum.map(rows, format_row)], "\n")

  @moduledoc """
  Pool options: their meaning, defaults, and validation; and the
  application's own configuration, `config :snakepit`.

  A pool is configured with a keyword list, either as a child spec
  (`{Snakepit.Pool, name: :ml, adapter: "my_pkg.model.Adapter"}`) or in
  `config :snakepit, pools: [default: [adapter: "..."]]`. Every option is
  declared once, in a table in this module's source, from which this
  table, the checks of `validate/1`, `known_options/0` and
  `native_options/1` are all derived, so they cannot disagree.

  #{@options_table}

  A default shown as a call is computed by `validate/1` on the machine that
  runs the pool: `:size` defaults to the number of schedulers online there.
  `:env` may also be given as a map, and its names and values as atoms; it
  is stored as a list of string pairs.

  ### Timeouts and cancellation

  A call's `:timeout` (see `Snakepit.execute/3`; the pool's `:timeout` when
  the call gives none) counts from the call, queueing included;
  `:queue_timeout` bounds the part spent waiting for a worker. Past either,
  the caller gets a `:timeout` error and the call is cancelled:

  - a call still in the queue leaves it; one already written to a worker
    but not yet started there is skipped by the worker;
  - a call that is running is interrupted: the worker is told on its
    control pipe, and the Python bridge raises
    `snakepit_bridge.CallCancelled` inside the tool at its next Python
    bytecode (an `async` tool's task is cancelled instead), so its
    `finally` blocks run and the worker serves the next call;
    `snakepit_bridge.cancelled()` turns `True` too, for tools that poll;
  - a worker still busy with the call `:cancel_grace` ms later (a tool
    stuck in native code, which neither reaches) is killed and replaced.

  A caller that dies gives up its call the same way. The late answer of a
  cancelled call is never delivered.

  ### Health and recycling

  Every `:heartbeat_interval` ms each ready worker gets a heartbeat on its
  control pipe, answered by a thread of the bridge even while a call runs.
  A worker that misses `:heartbeat_misses` in a row (frozen, or stuck in C
  code holding the GIL) is killed and replaced. Workers are also recycled,
  drained of their calls first, after `:max_requests` calls, `:max_age` ms,
  or once their resident memory passes `:max_memory_mb` (checked every
  second; age and memory recycle one worker at a time, so capacity never
  drops by more than one). A worker that holds sessions waits for them to
  end before `:max_requests` or `:max_age` recycles it, up to twice the
  limit (see "Sessions" in `Snakepit`).

  ### Sessions and streams

  `:affinity` is the default of the call option of the same name;
  `:session_ttl` ends sessions idle that long (checked every second);
  `:max_sessions` bounds the sessions a pool holds. `:stream_window` is the
  default credit window of streaming calls: how many chunks a worker may
  send ahead of the consumer. See "Sessions" and "Streams" in `Snakepit`.

  ### Worker output

  What a worker prints to stderr, and its Python `logging` records, go to
  `Logger` through the pool process, tagged with the pool and worker. So
  that a worker logging in a loop cannot flood the BEAM's memory or stall
  the pool, each worker may send up to 2,000 lines (4 MiB) at once and 500
  lines (1 MiB) per second after that; lines are cut at 16 KiB. Output
  past that is read and dropped, counted in `:dropped_output_lines` of
  `Snakepit.get_stats/1`, and a warning says so (at most every 10 s per
  worker). The limits are in `native/snakepit_dispatch/src/output.rs`.

  ### Starting and stopping

  Workers start `:startup_batch_size` at a time, so a large pool does not
  fork-storm a small machine. A worker that dies is restarted at once; one
  that then fails again before its handshake is restarted with backoff (50 ms
  doubling to 10 s); after
  `:max_start_failures` failures in a row the pool stops with an error.
  Stopping a pool answers queued calls with a `:pool` error, lets running
  ones finish for up to `:shutdown_timeout` ms, then sends SIGTERM to each
  worker's process group, and SIGKILL a second later. Each worker's shepherd
  then kills anything the worker started, however deeply nested.

  ### Concurrency

  A worker runs `:concurrency` calls at once (1 by default): with more, the
  Python bridge runs plain tools on that many threads and `async def` tools
  on one asyncio event loop, and answers calls as they end. Use it for
  tools that mostly wait (HTTP, databases, LLM APIs), where a process per
  call wastes memory; keep 1 for CPU-bound Python, which holds the GIL
  (see "Many calls in one worker" in `docs/python.md`). Every guarantee
  holds per call: a timeout cancels that call only, a session's calls still
  run one after another (unless the adapter sets `concurrent_sessions =
  True`), and a worker that dies fails each call it was running with a
  `:worker` error. `Snakepit.list_workers/1` shows each worker's `:running`
  calls.

  ### Pipelining

  Up to `:concurrency + :pipeline_depth - 1` calls (4 by default) are
  written to a worker at once: the first `:concurrency` run, the others
  wait in its pipe, so a worker that finishes a call finds the next one
  there instead of waiting a round trip (tens of µs) for it. For many short calls that raises throughput and
  lowers the CPU each call costs (see `bench/roundtrip.exs`). Calls still
  go in FIFO order, to an idle worker first; those written behind a call
  whose worker dies are queued again, not failed (they never started).
  `pipeline_depth: 1` writes a call only to an idle worker.

  The price of pipelining is head-of-line blocking: a call written behind a
  slow one waits for it. `:reclaim_after` bounds that wait. Once a call has
  run `:reclaim_after` ms (50 by default; with `:concurrency` > 1, once each
  running call has), nothing more is written behind
  it, and the calls waiting behind it are taken back (the worker gives back
  those it has not started; see "Reclaim" in `docs/protocol.md`) and served
  by other workers, in their original order. The pool looks for such calls
  every `:reclaim_after / 2` ms, so a call waits behind a slow one at most
  about 1.5 x `:reclaim_after` ms before it is taken back (75 ms by
  default), and then runs as soon as a worker is free. Calls of a session
  bound to that worker stay (they can run nowhere else), and nothing is
  taken back while every worker is busy with a slow call.
  `reclaim_after: :infinity` turns this off.

  A call's `:queue_timeout` covers its wait in a worker's pipe too: when it
  passes, the call is taken out of the queue, or asked back from the worker
  whose pipe it waits in (and fails with the same `:timeout` error if the
  worker gives it back before starting it).

  ### Shared memory

  A binary or a `%Snakepit.Tensor{}`'s data of at least `:shm_threshold`
  bytes does not go through the pipe: its sender copies it once into an
  anonymous, sealed shared-memory file (a memfd) and passes only a handle in
  the frame (see "Shared memory" in `docs/protocol.md`). So such values are
  not bounded by `:max_frame_bytes`: a 1 GB tensor crosses with the default
  settings. The default threshold, 4 MiB, is where a segment starts to pay:
  below it a round trip through the pipe measured as fast or faster (1 MiB:
  the pipe 0.7x the segment's time; 2 MiB: 0.8-1.06x), from there on the
  two are even or the segment wins (100 MB: 2-3x faster; `bench/payload.exs`,
  `bench/shm.exs`).

  - Elixir → Python: binaries and tensors anywhere in the args. A tensor
    arrives as a read-only numpy array over the mapping (no copy); a binary
    arrives as `bytes` (one copy out of the mapping).
  - Python → Elixir: numpy arrays and `bytes` anywhere in a result or
    stream chunk (in lists, tuples and map values). The binary you get (a
    tensor's `:data`, or the bytes) points into the mapping, not at a copy:
    the memory is given back when the last reference to it is
    garbage-collected. Keep a `:binary.copy/1` if you keep a small part of
    a large result for long.

  `:shm_max_bytes` bounds the bytes of segments a pool has in flight: those
  of calls not answered yet, and those of results still referenced in the
  VM (`Snakepit.get_stats/1` reports them as `:shm_bytes`). A call that
  would pass it is refused, and a result that would is dropped (the worker
  goes on); either way the caller gets a retryable `:pool` error with
  `details.bytes` and `details.limit`. When the system refuses a segment
  (out of file descriptors or memory), the value travels in the frame
  instead, as it would below the threshold. Nothing has a name in the file system:
  when a worker, a caller or the whole BEAM dies, the kernel frees its
  segments with its file descriptors and mappings.

  ### Other languages

  With `:command`, each worker is that program instead of the Python
  bridge: any program, in any language, that speaks `docs/protocol.md`
  (`command: ["node", "/srv/app/worker.js"]`; no shell runs it). Such a
  pool has no `:adapter`, and refuses `:adapter`, `:python` and
  `:python_path`. Its program is found when the pool starts, as `:python`
  is (on the BEAM's `PATH`, or a path relative to `:cwd`), and must be
  executable. Every other option and every rule of this page (timeouts,
  cancellation, heartbeats, restarts, recycling) applies unchanged. What
  the program must do, and which variables below it must honour:
  `docs/other_languages.md`; `examples/node_worker/worker.js` is one, in
  JavaScript.

  ### Worker environment

  Workers inherit the BEAM's environment; `:env` adds variables to it or
  overrides them. The pool sets these itself:

  | variable                              | value                                                    |
  |---------------------------------------|----------------------------------------------------------|
  | `PYTHONPATH`                          | the `:python_path` directories, then Snakepit's own      |
  |                                       | `priv/python`, then the `PYTHONPATH` of `:env` if it has |
  |                                       | one, else the BEAM's own; empty entries are dropped      |
  | `PYTHONUNBUFFERED`                    | `1`, so that what a worker prints is logged at once      |
  | `SNAKEPIT_MAX_FRAME_BYTES`            | the pool's `:max_frame_bytes`                            |
  | `SNAKEPIT_CONCURRENCY`                | the pool's `:concurrency`                                |
  | `SNAKEPIT_POOL`, `SNAKEPIT_WORKER_ID` | the pool's name and the worker's id                      |
  | `SNAKEPIT_CONTROL_FD`                 | the worker's end of the control pipe                     |
  | `SNAKEPIT_SHM_FD`                     | the worker's end of its segment socket (shared memory)   |
  | `SNAKEPIT_SHM_THRESHOLD`              | the pool's `:shm_threshold`, `0` for `:infinity`         |
  | `SNAKEPIT_ELIXIR_TIMEOUT_MS`          | the pool's `:elixir_tool_timeout`; it also tells the     |
  |                                       | bridge that the host serves `ctx.call_elixir`            |
  | `SNAKEPIT_OWNER`                      | this BEAM, for `Snakepit.Orphans`                        |

  `:env` may not name any of the `SNAKEPIT_` variables above: the pool and
  the bridge rely on their values. Those are refused with a `:validation`
  error, as are empty names, names containing `=` or a NUL byte, and values
  containing a NUL byte. A `PYTHONPATH` in `:env` extends the workers' path
  (after `:python_path` and `priv/python`, see `docs/python.md`); a
  `PYTHONUNBUFFERED` in `:env` replaces the pool's; other `SNAKEPIT_` names
  are free (Snakepit's own tests use `SNAKEPIT_TEST_*`).

  The workers of a `:command` pool get the `SNAKEPIT_` variables and
  `:env`, but no `PYTHONPATH` or `PYTHONUNBUFFERED`.

  `:env` may also be a function of no arguments returning it.

  `:env` often carries secrets, so its values are never shown: errors about
  it name the variable only, `Snakepit.Pool.child_spec/1` hands the pool its
  `:env` wrapped in a function (supervisor reports print a child's start
  arguments), and `Snakepit.Pool` shows them as
  `"**redacted**"` in `:sys.get_status/1` and in crash reports (see
  `redact/1`).

  Snakepit's own `priv/python` is always on the workers' `PYTHONPATH`, so
  `snakepit_bridge` needs no install.

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A", size: 2)
      iex> {config.name, config.size, config.python, config.max_frame_bytes}
      {:default, 2, "python3", 67108864}

      iex> {:error, error} = Snakepit.Config.validate(adapter: "m.A", size: 0)
      iex> error.message
      "invalid pool option :size: expected a positive integer, got: 0"

  ## Application configuration

  Snakepit's application starts the pools of `config :snakepit`, given in
  two forms:

      # any number of pools, each with any of the options above
      config :snakepit,
        pools: [
          default: [adapter: "my_pkg.model.Adapter", size: 4],
          ml: [adapter: "my_pkg.ml.Adapter", size: 2, python_path: ["/srv/ml"]]
        ]

      # the design's flat keys: one pool, named :default
      config :snakepit,
        adapter_module: "my_pkg.model.Adapter",
        pool_size: 4,
        worker_timeout: 60_000

  | key                | meaning                                                          |
  |--------------------|------------------------------------------------------------------|
  | `:pools`           | `[name: options]`: one pool per entry, started in order          |
  | `:adapter_module`  | the flat form: the `:adapter` of a pool named `:default`         |
  | `:pool_size`       | the flat form: that pool's `:size`                               |
  | `:worker_timeout`  | the flat form: that pool's `:timeout`                            |
  | `:pooling_enabled` | `false` starts no pool at all, from either form (default `true`) |
  | `:redact_keys`     | names of secret keys, masked in errors and telemetry (see `Snakepit.Redact`) |

  The two forms can be combined as long as only one of them defines the
  `:default` pool. The flat form takes only those three keys: any other
  pool option (`python_path:`, `env:`, ...) at the top level is refused
  rather than guessed at, with the `pools:` entry that would do what was
  meant. One place for pool options keeps a configuration readable when it
  grows a second pool. `adapter_module` names a Python class: an Elixir
  module there (as in the design documents, whose adapters were Elixir
  modules) is refused with the equivalent `pools:` entry.

  Any other key is refused, not ignored: the application does not start,
  and the error lists the unknown keys, the accepted ones, and, for keys
  of the design that Snakepit does not implement (`session_affinity_enabled`,
  `session_cleanup_interval`, `max_retries`, `retry_backoff_ms`,
  `telemetry_enabled`, `stats_collection_interval`, ...), why. Pool options
  are validated at the same time. See `pools_from_env/1`.
  """

  @type t :: %__MODULE__{
          unquote_splicing(
            for %{name: name, shape: shape} <- @options, do: {name, elem(@shapes[shape], 0)}
          )
        }

  @typedoc "The options `native_options/1` passes to the native pool; 0 means no limit."
  @type native_options :: %{
          unquote_splicing(
            for name <- @native ++ [:circuit_threshold, :circuit_window, :circuit_cooldown],
                do: {name, quote(do: non_neg_integer())}
          )
        }

  @enforce_keys @required ++ Keyword.keys(@computed)
  defstruct for %{name: name, default: default} <- @options,
                do: {name, if(name in @enforce_keys, do: nil, else: default)}

  @doc """
  The longest duration, in milliseconds, that a timeout option (of a pool,
  of `Snakepit.execute/3` or of `Snakepit.await_ready/2`) accepts: 2^32 - 1,
  about 49.7 days, the most the VM can wait for in `receive ... after`.

      iex> Snakepit.Config.max_timeout()
      4294967295
  """
  @spec max_timeout() :: pos_integer()
  def max_timeout, do: @max_ms

  @doc """
  The interpreter the `:python` option names: a path is used as is, a name
  is looked up on the BEAM's `PATH`, and a directory is a virtualenv whose
  interpreter is used (see `Snakepit.Venv.interpreter/1`).
  `{:error, :not_on_path}` for a name not found there, `{:error, :not_found}`
  for a path that does not exist, a `t:Snakepit.Venv.problem/0` for a
  directory that has no interpreter.

      iex> {:ok, path} = Snakepit.Config.find_python("sh")
      iex> Path.basename(path)
      "sh"
      iex> Snakepit.Config.find_python("/no/such/python3")
      {:error, :not_found}
      iex> Snakepit.Config.find_python("/proc")
      {:error, :no_interpreter}
  """
  @spec find_python(String.t()) ::
          {:ok, String.t()} | {:error, :not_on_path | :not_found | Snakepit.Venv.problem()}
  def find_python(python) do
    found = if String.contains?(python, "/"), do: python, else: System.find_executable(python)

    cond do
      found == nil -> {:error, :not_on_path}
      File.dir?(found) -> Snakepit.Venv.interpreter(found)
      File.exists?(found) -> {:ok, found}
      true -> {:error, :not_found}
    end
  end

  @doc """
  The program of a `:command` (its first element), found as the workers of
  a pool whose `:cwd` is `cwd` (`nil`: the BEAM's) will run it: a name
  without `/` is looked up on the BEAM's `PATH`, a path is taken relative
  to `cwd`. Returns its absolute path; `{:error, :not_on_path}` for a name
  not found there, `{:error, :not_found}` for a path that does not exist,
  `{:error, :not_executable}` for a directory or a file without execute
  permission.

      iex> {:ok, path} = Snakepit.Config.find_command("sh", nil)
      iex> Path.basename(path)
      "sh"
      iex> Snakepit.Config.find_command("bin/no-such-worker", "/tmp")
      {:error, :not_found}
      iex> Snakepit.Config.find_command("/tmp", nil)
      {:error, :not_executable}
  """
  @spec find_command(String.t(), String.t() | nil) ::
          {:ok, String.t()} | {:error, :not_on_path | :not_found | :not_executable}
  def find_command(program, cwd) do
    found =
      if String.contains?(program, "/"),
        do: Path.expand(program, cwd || File.cwd!()),
        else: System.find_executable(program)

    case found && File.stat(found) do
      nil -> {:error, :not_on_path}
      {:ok, %{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0 -> {:ok, found}
      {:ok, _} -> {:error, :not_executable}
      {:error, _} -> {:error, :not_found}
    end
  end

  @doc """
  The option names a pool accepts, in the order of the table above.

      iex> Enum.take(Snakepit.Config.known_options(), 3)
      [:name, :adapter, :size]
  """
  @spec known_options() :: [atom()]
  def known_options, do: @known

  @doc """
  Validates pool options and fills in defaults, computing those that
  depend on the machine (`:size`).

  Returns `{:error, %Snakepit.Error{category: :validation}}` naming the first
  bad option in its message and in `details.option`.

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A")
      iex> config.size == System.schedulers_online()
      true
      iex> {:error, error} = Snakepit.Config.validate(adapter: "m.A", timeout: 0)
      iex> {error.message, error.details}
      {"invalid pool option :timeout: expected a positive integer or :infinity (milliseconds, up to 4_294_967_295), got: 0", %{option: :timeout}}
  """
  @spec validate(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def validate(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      with :ok <- check_unknown(opts),
           :ok <- check_command_excludes(opts),
           {:ok, required} <- fetch_required(opts) do
        computed = for {name, {m, f, a}} <- @computed, do: {name, apply(m, f, a)}
        defaults = struct!(__MODULE__, required ++ computed)

        Enum.reduce_while(opts, {:ok, defaults}, fn {key, value}, {:ok, acc} ->
          case check_option(key, value) do
            {:ok, value} -> {:cont, {:ok, Map.put(acc, key, value)}}
            {:error, expected} -> {:halt, {:error, invalid(key, expected, value)}}
          end
        end)
      end
    else
      not_a_keyword_list("pool options", opts)
    end
  end

  def validate(other), do: not_a_keyword_list("pool options", other)

  @doc """
  `term` with the values of every `:env` in it (pool options, a pool's
  config, or anything holding them) replaced by `"**redacted**"`, their
  names kept: what may be shown in an error message, a log or a crash
  report.

      iex> Snakepit.Config.redact(adapter: "m.A", env: %{"TOKEN" => "s3cr3t"})
      [adapter: "m.A", env: %{"TOKEN" => "**redacted**"}]
  """
  @spec redact(term()) :: term()
  def redact({:env, env}), do: {:env, redact_env(env)}
  def redact({key, value}), do: {key, redact(value)}
  def redact([head | tail]), do: [redact(head) | redact(tail)]

  def redact(map) when is_map(map) do
    :maps.map(
      fn
        :env, env -> redact_env(env)
        _key, value -> redact(value)
      end,
      map
    )
  end

  def redact(other), do: other

  defp redact_env(env) when is_map(env), do: Map.new(env, &redact_env_entry/1)
  defp redact_env(env) when is_list(env), do: Enum.map(env, &redact_env_entry/1)
  defp redact_env(_env), do: "**redacted**"

  defp redact_env_entry({name, _value}), do: {name, "**redacted**"}
  defp redact_env_entry(_entry), do: "**redacted**"

  @doc """
  The options of a validated pool that the native pool takes: #{Enum.map_join(@native, ", ", &"`#{inspect(&1)}`")},
  as integers, with `:infinity` passed as `0` ("no limit").

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A", size: 2, max_requests: 500)
      iex> Snakepit.Config.native_options(config)
      %{max_frame_bytes: 67108864, shm_threshold: 4194304, shm_max_bytes: 4294967296, size: 2,
        concurrency: 1, pipeline_depth: 4, max_queue: 10000, max_requests: 500, max_age: 0, max_memory_mb: 0, max_sessions: 10000,
        session_ttl: 1800000, circuit_threshold: 0, circuit_window: 0, circuit_cooldown: 0}
  """
  @spec native_options(t()) :: native_options()
  def native_options(%__MODULE__{} = config) do
    @native
    |> Map.new(fn name -> {name, native_value(Map.fetch!(config, name))} end)
    |> Map.merge(circuit_native(config.circuit_breaker))
  end

  # The circuit breaker goes to the native pool as three integers; a
  # threshold of 0 means no breaker.
  defp circuit_native(false), do: %{circuit_threshold: 0, circuit_window: 0, circuit_cooldown: 0}

  defp circuit_native(settings) do
    %{
      circuit_threshold: settings[:threshold],
      circuit_window: settings[:window],
      circuit_cooldown: settings[:cooldown]
    }
  end

  defp native_value(:infinity), do: 0
  defp native_value(n) when is_integer(n) and n >= 0, do: n

  @doc """
  Translates the application environment of `:snakepit` (what
  `Application.get_all_env(:snakepit)` returns) into the pools to start:
  `{name, options}` pairs, in order, each with its `:name` among the
  options, every pool's options validated with `validate/1`. See
  "Application configuration" above for the accepted keys, and
  `Snakepit.Config.AppEnv` for the translation.

      iex> Snakepit.Config.pools_from_env(adapter_module: "my_pkg.mod.Adapter", pool_size: 4)
      {:ok, [default: [name: :default, adapter: "my_pkg.mod.Adapter", size: 4]]}
  """
  @spec pools_from_env(keyword()) :: {:ok, [{atom(), keyword()}]} | {:error, Error.t()}
  defdelegate pools_from_env(env), to: Snakepit.Config.AppEnv

  defp not_a_keyword_list(what, term) do
    {:error,
     Error.validation("#{what} must be a keyword list, got: #{Error.excerpt(redact(term))}")}
  end

  defp check_unknown(opts) do
    case Enum.find(Keyword.keys(opts), &(&1 not in @known)) do
      nil ->
        :ok

      key ->
        {:error,
         Error.validation(
           "unknown pool option #{inspect(key)}; known options: " <>
             Enum.map_join(@known, ", ", &inspect/1),
           %{option: key}
         )}
    end
  end

  # A pool that runs a :command has no :adapter (nil), and takes none of
  # the options of the Python bridge: they would be silently ignored.
  @python_only [:adapter, :python, :python_path]

  defp command?(opts), do: Keyword.get(opts, :command) != nil

  defp check_command_excludes(opts) do
    case if(command?(opts), do: Enum.filter(@python_only, &Keyword.has_key?(opts, &1)), else: []) do
      [] ->
        :ok

      given ->
        {:error,
         Error.validation(
           "invalid pool options: :command excludes #{Enum.map_join(given, ", ", &inspect/1)} " <>
             "(a :command pool runs its own program, not the Python bridge: give that " <>
             "program's settings in :command, :env and :cwd)",
           %{option: :command, excludes: given}
         )}
    end
  end

  defp fetch_required(opts) do
    {required, given} =
      if command?(opts), do: {@required -- [:adapter], [adapter: nil]}, else: {@required, []}

    Enum.reduce_while(required, {:ok, given}, fn key, {:ok, acc} ->
      case Keyword.fetch(opts, key) do
        {:ok, value} ->
          {:cont, {:ok, [{key, value} | acc]}}

        :error ->
          {:halt,
           {:error,
            Error.validation("missing required pool option #{inspect(key)}", %{option: key})}}
      end
    end)
  end

  # An :env problem is described without its values (they may be secrets).
  defp invalid(:env, {:env, problem, details}, _value) do
    Error.validation("invalid pool option :env: " <> problem, Map.put(details, :option, :env))
  end

  defp invalid(key, expected, value) do
    Error.validation(
      "invalid pool option #{inspect(key)}: expected #{expected}, got: #{Error.excerpt(value)}",
      %{option: key}
    )
  end

  @doc """
  Checks one pool option's value: `{:ok, value}` (normalized), or
  `{:error, expected}` with the words that say what it must be (for `:env`,
  `{:error, {:env, what is wrong, details}}`).

      iex> Snakepit.Config.check_option(:size, 0)
      {:error, "a positive integer"}
  """
  @spec check_option(atom(), term()) :: {:ok, term()} | {:error, term()}
  def check_option(key, value) do
    shape = Map.fetch!(@shape_of, key)

    case accept(shape, value) do
      # The native pool takes 64-bit integers.
      {:ok, value} when key in @native and is_integer(value) and value > @max_native ->
        {:error, "#{Map.fetch!(@expected, shape)} up to #{@max_native}"}

      {:ok, value} ->
        {:ok, value}

      {:error, {:env, _, _}} = error ->
        error

      :error ->
        {:error, Map.fetch!(@expected, shape)}
    end
  end

  defp accept(:pool_name, v) when is_atom(v) and v not in [nil, true, false], do: {:ok, v}

  defp accept(:python_class, v) when is_binary(v) do
    if String.match?(v, ~r/^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$/), do: {:ok, v}, else: :error
  end

  defp accept(:python_class, v) when is_atom(v) and v not in [nil, true, false] do
    if Snakepit.Adapter.adapter?(v), do: {:ok, v}, else: :error
  end

  defp accept(:command, nil), do: {:ok, nil}
  defp accept(:command, [_ | _] = v), do: if(argv?(v), do: {:ok, v}, else: :error)

  defp accept(:pos_integer, v) when is_integer(v) and v > 0, do: {:ok, v}
  defp accept(:pos_ms, v) when is_integer(v) and v > 0 and v <= @max_ms, do: {:ok, v}
  defp accept(:non_neg_ms, v) when is_integer(v) and v >= 0 and v <= @max_ms, do: {:ok, v}
  defp accept(:pos_ms_or_infinity, :infinity), do: {:ok, :infinity}
  defp accept(:pos_ms_or_infinity, v) when is_integer(v) and v > 0 and v <= @max_ms, do: {:ok, v}
  defp accept(:pos_or_infinity, :infinity), do: {:ok, :infinity}
  defp accept(:pos_or_infinity, v) when is_integer(v) and v > 0, do: {:ok, v}
  defp accept(:string, v) when is_binary(v) and v != "", do: {:ok, v}

  defp accept(:dir_list, v) when is_list(v) do
    if Enum.all?(v, &is_binary/1), do: {:ok, v}, else: :error
  end

  # A function returning the env: how `Snakepit.Pool.child_spec/1` keeps the
  # values out of supervisor reports, which print a child's start arguments.
  defp accept(:env, v) when is_function(v, 0), do: check_env(v.())
  defp accept(:env, v), do: check_env(v)

  defp accept(:dir_or_nil, v) when is_nil(v) or is_binary(v), do: {:ok, v}

  defp accept(:frame_size, v) when is_integer(v) and v > 0 and v <= @max_frame_limit,
    do: {:ok, v}

  defp accept(:depth, v) when is_integer(v) and v in 1..64, do: {:ok, v}
  defp accept(:concurrency, v) when is_integer(v) and v in 1..1024, do: {:ok, v}
  defp accept(:affinity, v) when v in [:strict, :hint, :fail_fast], do: {:ok, v}
  defp accept(:circuit, false), do: {:ok, false}

  defp accept(:circuit, v) when is_list(v) do
    with true <- Keyword.keyword?(v),
         [] <- Keyword.keys(v) -- [:threshold, :window, :cooldown],
         settings = for({k, d} <- @circuit_defaults, do: {k, Keyword.get(v, k, d)}),
         true <- Enum.all?(Keyword.values(settings), &(is_integer(&1) and &1 > 0 and &1 <= @max_ms)) do
      {:ok, settings}
    else
      _ -> :error
    end
  end

  defp accept(:retry, false), do: {:ok, false}

  defp accept(:retry, v) when is_list(v) do
    if Keyword.keyword?(v) and not Keyword.has_key?(v, :timeout), do: {:ok, v}, else: :error
  end

  defp accept(:window, v) when is_integer(v) and v in 1..65_536, do: {:ok, v}

  defp accept(:elixir_tools, v) do
    case Snakepit.ElixirTools.check_tools(v) do
      {:ok, tools} -> {:ok, tools}
      :error -> :error
    end
  end

  defp accept(_shape, _value), do: :error

  defp argv?([]), do: true

  defp argv?([arg | rest]) when is_binary(arg) and arg != "",
    do: not String.contains?(arg, <<0>>) and argv?(rest)

  defp argv?(_), do: false

  # The SNAKEPIT_ variables the pool (Snakepit.Pool.start_worker/2) and the
  # native side (native/snakepit_nif/src/worker.rs) set for every worker:
  # :env may not replace them. Keep in step with those two.
  @pool_env ~w(SNAKEPIT_MAX_FRAME_BYTES SNAKEPIT_CONCURRENCY SNAKEPIT_POOL SNAKEPIT_WORKER_ID
               SNAKEPIT_CONTROL_FD SNAKEPIT_OWNER SNAKEPIT_SHM_FD SNAKEPIT_SHM_THRESHOLD
               SNAKEPIT_ELIXIR_TIMEOUT_MS)

  # The :env as string pairs, or what is wrong with it, never quoting a
  # value. Names are checked against what the pool sets itself.
  defp check_env(env) when is_map(env), do: check_env(Map.to_list(env))

  defp check_env(env) when is_list(env), do: check_env(env, 1, [])

  defp check_env(env) do
    env_error("expected #{@expected[:env]}, got #{kind_of(env)}")
  end

  defp check_env([], _index, pairs), do: {:ok, Enum.reverse(pairs)}

  defp check_env([entry | rest], index, pairs) do
    case env_entry(entry, index) do
      {:ok, pair} -> check_env(rest, index + 1, [pair | pairs])
      error -> error
    end
  end

  defp check_env(_improper_tail, _index, _pairs),
    do: env_error("expected #{@expected[:env]}, got an improper list")

  defp env_entry({name, value}, _index) when is_binary(name) or is_atom(name) do
    name = to_string(name)

    cond do
      (problem = env_name_problem(name)) != nil ->
        env_error(problem, name)

      not (is_binary(value) or is_atom(value)) ->
        env_error("the value of #{Error.excerpt(name)} is not a string or an atom", name)

      String.contains?(to_string(value), <<0>>) ->
        env_error("the value of #{Error.excerpt(name)} contains a NUL byte", name)

      true ->
        {:ok, {name, to_string(value)}}
    end
  end

  defp env_entry({_name, _value}, index),
    do: env_error("the name of entry #{index} is not a string or an atom")

  defp env_entry(_entry, index),
    do: env_error("entry #{index} is not a {name, value} pair (expected #{@expected[:env]})")

  defp env_name_problem(""), do: "a name is empty"

  defp env_name_problem(name) when name in @pool_env,
    do: "#{name} is set by the pool itself (see \"Worker environment\" in Snakepit.Config)"

  defp env_name_problem(name) do
    cond do
      String.contains?(name, "=") -> "the name #{Error.excerpt(name)} contains \"=\""
      String.contains?(name, <<0>>) -> "the name #{Error.excerpt(name)} contains a NUL byte"
      true -> nil
    end
  end

  defp env_error(problem), do: {:error, {:env, problem, %{}}}
  defp env_error(problem, name), do: {:error, {:env, problem, %{name: name}}}

  defp kind_of(term) when is_binary(term), do: "a string"
  defp kind_of(term) when is_number(term), do: "a number"
  defp kind_of(term) when is_atom(term), do: "an atom"
  defp kind_of(term) when is_tuple(term), do: "a tuple"
  defp kind_of(_term), do: "another term"
end
