defmodule Snakepit do
  @moduledoc """
  Run Python (or any external program) from Elixir through pools of
  long-lived worker processes.

      # config/config.exs
      config :snakepit,
        pools: [default: [adapter: "snakepit_bridge.examples.demo.DemoAdapter", size: 2]]

      iex> Snakepit.execute("add", %{a: 1, b: 2})
      {:ok, 3}

  Every call returns `{:ok, result}` or `{:error, %Snakepit.Error{}}`: a
  Python exception (with its traceback), a timeout, a dead worker, bad input.
  Never a hang, never someone else's reply, never an exception in the caller
  (use `execute!/3` for that).

  ## What crosses the pipe

  Arguments and results travel as MessagePack:

  | Elixir                          | Python                 | back in Elixir              |
  |---------------------------------|------------------------|-----------------------------|
  | `nil`, `true`, `false`          | `None`, `True`, `False`| same                        |
  | integers (64-bit signed or unsigned) | `int`             | integer                     |
  | floats                          | `float`                | float; NaN and ±inf as `:nan`, `:infinity`, `:neg_infinity` |
  | UTF-8 binaries, other atoms     | `str`                  | binary                      |
  | other binaries                  | `bytes`                | binary                      |
  | lists, tuples                   | `list`                 | list                        |
  | maps                            | `dict`                 | map                         |
  | `Snakepit.Tensor` structs       | `numpy.ndarray` (read-only) | `Snakepit.Tensor` struct |
  | —                               | numpy arrays (bool, int, float, complex; any layout) | `Snakepit.Tensor` struct (data not copied; see its docs) |

  Map keys come back as binaries (`%{a: 1}` returns as `%{"a" => 1}`):
  atoms are never created from worker data. Pids, references, functions,
  ports and integers beyond 64 bits are refused with a `:validation` error
  that names where in the arguments they were. So are two keys of one map
  that Python would take for one key (`:x` and `"x"`, `1` and `1.0`, `true`
  and `1`), where Python would silently keep the last.

  ## Sessions

  A session keeps state in one worker across calls: a loaded program, a
  cache, a conversation. Give calls a `:session_id` (or use
  `execute_in_session/4`; `new_session_id/0` makes a random id). The
  session's first call binds it to the worker that runs it; later calls go
  to that worker, as their `:affinity` says:

  - `:strict` (the default): only that worker, waiting in the queue for it
    even while others are idle. The session's calls run in the order they
    were submitted.
  - `:hint`: that worker if it has room, else any: state may be absent
    there (the tool sees `ctx.session.is_new`).
  - `:fail_fast`: that worker if it is free, else a `:pool` error at once.

  Python tools that take a `ctx` parameter get a `snakepit_bridge.Context`
  whose `ctx.session` has the session's `id`, a `state` dict that lives as
  long as the session does in that worker, `is_new` and `calls` (see
  `docs/python.md`). The routing is decided natively, in the pool's
  dispatcher, with no process on the way.

  A session ends with `end_session/2`, or when it has been idle (no call
  submitted or running) for the pool's `:session_ttl` (30 minutes by
  default, checked every second); its workers then forget it, calling the
  adapter's `on_session_end(session)` first. A pool holds at most
  `:max_sessions` sessions (10,000 by default): past it, a call that would
  start a new session gets a `:pool` error; nothing is evicted.
  `list_sessions/1` and `session_info/2` show each session's worker, age
  and calls.

  **Loss.** When a session's worker dies or is recycled, its state is gone.
  The session's calls that were waiting for that worker (`:strict`,
  `:fail_fast`), and its call that was running there, get a `:worker` error
  with `details.session_lost: true`; if none was waiting, its next call
  gets that error. Either way the session then starts afresh on another
  worker, and `ctx.session.is_new` is true there. A `:hint` call starts it
  afresh without an error.

  **Recycling.** `:max_requests` and `:max_age` wait for a worker's
  sessions to end (the worker takes no new session meanwhile if another
  worker can), but not forever: at twice the limit it is recycled anyway
  and its sessions are lost. So a session of normal length survives a
  recycle, and one that never ends cannot pin an old worker forever.
  `:max_memory_mb` does not wait: memory is a safety limit.

  ## Streams

  A Python tool that is a generator (or an async generator) streams: each
  `yield` is one chunk. `stream/3` makes a lazy `Enumerable` of them and
  `execute_stream/4` runs a callback on each, in the caller's process:

      iex> Snakepit.stream("countdown", %{n: 3}) |> Enum.to_list()
      [3, 2, 1]

  Chunks flow with backpressure by credits: the worker may run at most
  `:stream_window` chunks (default 32) ahead of the consumer, so a slow
  consumer of a fast or infinite generator keeps both the BEAM's and the
  worker's memory flat; the generator waits in `yield`. Stopping early
  (`Enum.take/2`, an exception, the consumer dying) cancels the call: the
  generator is closed, so its `finally` blocks run, and the worker is free
  for the next call.

  For streams, `:timeout` bounds the whole stream and defaults to
  `:infinity`, and `:chunk_timeout` bounds each wait for the next chunk and
  defaults to the pool's `:timeout`. A stream ends with exactly one outcome:
  `:ok` (or the end of the enumeration), or one error after the chunks that
  came before it.

  Tools that are not generators work with the stream functions too (one
  chunk), and a generator tool called with `execute/3` returns the list of
  all its items, which must fit in the pool's `:max_frame_bytes`, so an
  infinite generator called that way only ends at its `:timeout`.

  ## Python calls Elixir

  A Python tool may call back: `ctx.call_elixir("name", **kwargs)` runs an
  Elixir function registered for the pool (the pool option
  `:elixir_tools`, or `register_tool/3`) in a process of its own, with a
  timeout, and gets its value, or a `snakepit_bridge.ElixirError` with the
  fields of a `Snakepit.Error`. The function may call the pool again. See
  `Snakepit.ElixirTools`.

  ## Errors, correlation and telemetry

  Every error is a `Snakepit.Error` with a category, a message, details,
  and the Python traceback when there is one; `Snakepit.Error.retryable?/1`
  says whether trying again cannot repeat a side effect (the call never
  started, or the Python tool raised a `ToolError` with `retryable=True`).
  Keys named like secrets are masked in details and messages
  (`Snakepit.Redact`).

  Every call has a correlation id (`:correlation_id`, or a new one, see
  `Snakepit.Correlation`): it is in its error's `details.correlation_id`,
  in its telemetry events' metadata, in the `Logger` metadata of what the
  tool logs or prints, and in Python on `ctx.correlation_id` and on every
  log record. `Snakepit.Telemetry` lists the `:telemetry` events.

  ## Retries and the circuit breaker

  With `retry: [max_attempts: 3, base_backoff: 50, max_backoff: 2_000]`
  (per call, or as the pool's default), a call whose error is
  `retryable?` is tried again after an exponential backoff with full
  jitter, all attempts within the call's `:timeout` (see `Snakepit.Retry`;
  add `categories: [:timeout, :worker]` for tools safe to run twice).

  With the pool option `circuit_breaker: [threshold: 5, window: 10_000,
  cooldown: 5_000]`, `threshold` calls in a row that end in a worker fault
  (their worker died or broke the protocol, or they timed out), within
  `window` ms, open the circuit: calls fail at once with a `:pool` error
  whose details have `circuit: :open` and `retry_after_ms`, for `cooldown`
  ms. Then one call goes through as a probe: its success closes the
  circuit, its failure opens it again. Any answer from a worker, a Python
  error included, counts as a success. The state is in `get_stats/1`'s
  `:circuit`, and its changes are logged and emitted as telemetry. Off by
  default.

  ## Pools

  Pools are started by Snakepit's application from `config :snakepit, pools:`,
  or by you with `{Snakepit.Pool, opts}` in a supervision tree. See
  `Snakepit.Pool` for the design and `Snakepit.Config` for the options.
  """

  alias Snakepit.{Call, CallOptions, Error, Pool}

  @default_timeout 30_000

  @typedoc "Options of `execute/3`."
  @type execute_opt ::
          {:pool, atom()}
          | {:timeout, timeout()}
          | {:queue_timeout, timeout()}
          | {:session_id, String.t() | nil}
          | {:affinity, affinity()}
          | {:correlation_id, String.t()}
          | {:retry, keyword() | false}

  @typedoc "How a call of a session picks its worker; see \"Sessions\"."
  @type affinity :: :strict | :hint | :fail_fast

  @typedoc "Options of `execute_stream/4` and `stream/3`."
  @type stream_opt :: execute_opt() | {:chunk_timeout, timeout()} | {:stream_window, pos_integer()}

  @doc """
  Calls `command` (a tool of the pool's adapter) with `args` as keyword
  arguments, in a free worker of the pool.

  Options (the full table, with defaults, is in `Snakepit.CallOptions`):
  `:pool`, `:timeout` (ms for the answer, queueing included; past it the
  worker is told to cancel, the caller gets a `:timeout` error, and a late
  answer is dropped), `:queue_timeout` (ms to wait for a worker to start
  it), `:session_id` and `:affinity` (see "Sessions"), `:correlation_id`
  (see `Snakepit.Correlation`) and `:retry` (see `Snakepit.Retry`). An
  option not in that table is a `:validation` error naming it. See also
  "Timeouts and cancellation" and "Pipelining" in `Snakepit.Config`.

  `args` is a map (or a keyword list); its keys become the tool's keyword
  argument names. Timeouts are `:infinity` or integers from 0 to
  `Snakepit.Config.max_timeout/0` (about 49.7 days, the most the VM can wait
  for); other values, like bad arguments, are refused with a `:validation`
  error before the call is made.

      iex> Snakepit.execute("add", %{a: 1, b: 2})
      {:ok, 3}
      iex> {:error, error} = Snakepit.execute("nope", %{})
      iex> error.category
      :validation
  """
  @spec execute(String.t() | atom(), map() | keyword(), [execute_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def execute(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- Call.prepare(command, args, opts, :call), do: Call.run(call, false)
  end

  @doc """
  Like `execute/3`, but returns the result or raises `Snakepit.Error`.

      iex> Snakepit.execute!("add", %{a: 2, b: 3})
      5
  """
  @spec execute!(String.t() | atom(), map() | keyword(), [execute_opt()]) :: term()
  def execute!(command, args \\ %{}, opts \\ []) do
    case with({:ok, call} <- Call.prepare(command, args, opts, :call), do: Call.run(call, true)) do
      {:ok, result} -> result
      {:error, error} -> raise error
    end
  end

  @doc """
  Calls `command` in the session `session_id`: `execute/3` with the
  `:session_id` option. See "Sessions" in the module docs.

      iex> id = Snakepit.new_session_id()
      iex> Snakepit.execute_in_session(id, "remember", %{key: "lang", value: "elixir"})
      {:ok, "elixir"}
      iex> Snakepit.execute_in_session(id, "remember", %{key: "lang"})
      {:ok, "elixir"}
      iex> Snakepit.end_session(id)
      :ok
  """
  @spec execute_in_session(String.t(), String.t() | atom(), map() | keyword(), [execute_opt()]) ::
          {:ok, term()} | {:error, Error.t()}
  def execute_in_session(session_id, command, args \\ %{}, opts \\ []) do
    execute(command, args, Keyword.put(opts, :session_id, session_id))
  end

  @doc """
  Ends a session: each worker that holds state for it forgets it (after
  the calls of it already sent to that worker, calling the adapter's
  `on_session_end` hook first), and its binding is freed. Calls of it still
  queued start it afresh. Ending a session the pool does not know is not an
  error: it returns `:ok` too.

  Options: `:pool` (default `:default`).
  """
  @spec end_session(String.t(), keyword()) :: :ok | {:error, Error.t()}
  def end_session(session_id, opts \\ []) do
    pool = Keyword.get(opts, :pool, :default)

    with {:ok, entry} <- Pool.fetch(pool),
         {:ok, {id, _}} <- CallOptions.session_route([session_id: session_id], entry) do
      if Snakepit.Call.backend(entry.handle).end_session(entry.handle, id) do
        Snakepit.Telemetry.emit(
          [:snakepit, :session, :cleanup],
          %{system_time: System.system_time()},
          %{pool: pool, session_id: id, reason: :ended}
        )
      end

      :ok
    end
  end

  @doc """
  The sessions of a pool, ordered by id. Each is a map: `:session_id`,
  `:worker_id` and `:os_pid` of the worker it is bound to (`nil` before its
  first call runs, or after its worker was lost), `:age_ms` (since it
  started), `:idle_ms` (since its last call was submitted or answered),
  `:calls` (submitted since it started), `:pending` (calls queued or
  running) and `:lost` (its worker is gone and no call was told yet).

      iex> id = Snakepit.new_session_id()
      iex> {:ok, _} = Snakepit.execute_in_session(id, "remember", %{key: "k", value: 1})
      iex> [info] = Enum.filter(Snakepit.list_sessions(), &(&1.session_id == id))
      iex> {info.calls, info.pending, is_integer(info.os_pid)}
      {1, 0, true}
  """
  @spec list_sessions(atom()) :: [map()] | {:error, Error.t()}
  def list_sessions(pool \\ :default) do
    with {:ok, %{handle: handle}} <- Pool.fetch(pool) do
      Snakepit.Call.backend(handle).pool_sessions(handle)
    end
  end

  @doc """
  One session, as a map like those of `list_sessions/1`, or a
  `:validation` error if the pool has no such session.

  Options: `:pool` (default `:default`).
  """
  @spec session_info(String.t(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def session_info(session_id, opts \\ []) do
    pool = Keyword.get(opts, :pool, :default)

    with {:ok, entry} <- Pool.fetch(pool),
         {:ok, {id, _}} <- CallOptions.session_route([session_id: session_id], entry) do
      case Snakepit.Call.backend(entry.handle).pool_session(entry.handle, id) do
        nil ->
          {:error,
           Error.validation("pool #{inspect(pool)} has no session #{Error.excerpt(id)}", %{
             session_id: id,
             pool: pool
           })}

        info ->
          {:ok, info}
      end
    end
  end

  @doc """
  A new random session id: 128 bits from `:crypto.strong_rand_bytes/1`,
  URL-safe Base64 (22 characters).

      iex> id = Snakepit.new_session_id()
      iex> byte_size(id)
      22
      iex> id == Snakepit.new_session_id()
      false
  """
  @spec new_session_id() :: String.t()
  def new_session_id do
    :crypto.strong_rand_bytes(16) |> Base.url_encode64(padding: false)
  end

  @doc """
  Runs a streaming call and gives each chunk to `callback`, in order, in
  the calling process; returns `:ok` once the tool has finished, or the
  first error. See "Streams" in the module docs for the options
  (`execute/3`'s, plus `:chunk_timeout` and `:stream_window`).

  If `callback` raises, the stream is cancelled (the Python generator is
  closed) and the exception goes on.

      iex> {:ok, agent} = Agent.start_link(fn -> [] end)
      iex> Snakepit.execute_stream("countdown", %{n: 3}, fn n -> Agent.update(agent, &[n | &1]) end)
      :ok
      iex> Agent.get(agent, &Enum.reverse/1)
      [3, 2, 1]
  """
  @spec execute_stream(String.t() | atom(), map() | keyword(), (term() -> any()), [stream_opt()]) ::
          :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ []) when is_function(callback, 1) do
    Snakepit.Stream.run(command, args, callback, opts)
  end

  @doc """
  `execute_stream/4` in the session `session_id`.
  """
  @spec execute_in_session_stream(
          String.t(),
          String.t() | atom(),
          map() | keyword(),
          (term() -> any()),
          [stream_opt()]
        ) :: :ok | {:error, Error.t()}
  def execute_in_session_stream(session_id, command, args, callback, opts \\ []) do
    execute_stream(command, args, callback, Keyword.put(opts, :session_id, session_id))
  end

  @doc """
  A streaming call as a lazy `Enumerable`: nothing runs until it is
  enumerated, and each enumeration is a new call. Halting early
  (`Enum.take/2`, `Stream.take_while/2`, an exception in the consumer, the
  consuming process dying) cancels it: the Python generator is closed, so
  its `finally` blocks run, and the worker is free for the next call.

  An error (the tool raised, a timeout, a dead worker) is raised as a
  `Snakepit.Error` from the enumeration, after the chunks that came
  before it. Options as for `execute_stream/4`.

      iex> Snakepit.stream("countdown", %{n: 5}) |> Enum.take(2)
      [5, 4]
  """
  @spec stream(String.t() | atom(), map() | keyword(), [stream_opt()]) :: Enumerable.t()
  def stream(command, args \\ %{}, opts \\ []) do
    Snakepit.Stream.lazy(command, args, opts)
  end

  @doc """
  Waits until every worker of `pool` has started, up to `timeout` ms
  (`:infinity`, or at most `Snakepit.Config.max_timeout/0`; another value
  is a `:validation` error).

      iex> Snakepit.await_ready(:default, 10_000)
      :ok
  """
  @spec await_ready(atom(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(pool \\ :default, timeout \\ @default_timeout) do
    with {:ok, timeout} <- CallOptions.check_timeout(:timeout, timeout) do
      Pool.await_ready(pool, timeout)
    end
  end

  @doc """
  Counters of a pool: workers by state, queue length, requests and their
  outcomes. Read from the native pool, without going through any process.

      iex> stats = Snakepit.get_stats()
      iex> Map.take(stats, [:workers, :queued])
      %{queued: 0, workers: 2}
      iex> stats.requests == stats.completed + stats.python_errors + stats.validation_errors +
      ...>   stats.worker_errors + stats.transport_errors + stats.timeouts +
      ...>   stats.queue_timeouts + stats.cancelled + stats.rejected + stats.stopped +
      ...>   stats.queued + stats.in_flight
      true

  Gauges (now): `:workers`, `:idle`, `:busy`, `:starting`, `:stopping`,
  `:queued` (waiting for a worker) and `:in_flight` (written to workers,
  their callers still waiting).

  Counters (since the pool started): `:requests`, every call given to the
  pool, and its outcome, exactly one per request, counted when it is
  decided:

  - `:completed`: answered with a result;
  - `:python_errors`: the tool raised;
  - `:validation_errors`: refused before running: unknown tool, arguments
    that do not fit, a value that cannot be sent, a request over
    `:max_frame_bytes`;
  - `:worker_errors`: its worker died while running it, or its session
    was lost with its worker;
  - `:transport_errors`: its worker broke the protocol while running it;
  - `:timeouts`: its caller's `:timeout` passed (queued or running; a late
    answer is dropped and not counted again);
  - `:queue_timeouts`: its `:queue_timeout` passed while queued;
  - `:cancelled`: its caller died, or stopped consuming its stream early;
  - `:rejected`: refused because the queue held `:max_queue` calls, the
    pool held `:max_sessions` sessions, or (`:fail_fast`) its session's
    worker was busy;
  - `:stopped`: the pool stopped before a worker took it.

  So `requests` equals the sum of those ten plus `queued` and `in_flight`,
  and once the pool is quiet, the sum of the ten alone. A streaming call is
  one request, counted once when it ends. Also: `:requeued`
  (calls queued again because their worker died before starting them, or
  gave them back when the call ahead of them ran past `:reclaim_after`),
  `:restarts` (workers that died and were replaced), `:recycles` (workers
  replaced by `:max_requests`, `:max_age` or `:max_memory_mb`),
  `:dropped_output_lines` (lines of worker stderr and Python log records
  dropped because a worker wrote faster than its output budget; see
  "Worker output" in `Snakepit.Config`), and
  `:sessions` (sessions the pool holds now), `:sessions_expired` (ended by
  `:session_ttl`), `:sessions_lost` (their worker died or was recycled),
  `:chunks` (stream chunks delivered), `:shm_bytes` (bytes of shared-memory
  segments in flight now: sent to workers and not yet answered, or received
  and still referenced by a binary; see "Shared memory" in
  `Snakepit.Config`), `:circuit` (the circuit breaker's
  state: `:closed`, `:open`, `:half_open`, or `nil` without one),
  `:latency` (`%{queue: %{p50: _, p95: _, p99: _}, run: %{...}, samples: n}`:
  percentiles in microseconds of how long recent calls waited for a worker
  and ran, over the last 60 to 120 s, from native HDR histograms; before
  any call the percentiles are `nil` and `samples` is 0), and
  `:errors`, the error outcomes keyed by category of `Snakepit.Error`:
  `%{python_error: _, validation: _, worker: _, transport: _, timeout: _,
  pool: _}`. (Its `:python` key, the same count as `:python_error`, is
  deprecated: it predates keying by category, and goes in a later release.)

  Calls refused in the caller before they reach the pool (an unknown pool,
  a command that is not a string) are not counted. Returns
  `{:error, %Snakepit.Error{category: :pool}}` for an unknown pool.
  """
  @spec get_stats(atom()) :: map() | {:error, Error.t()}
  def get_stats(pool \\ :default) do
    with {:ok, %{handle: handle}} <- Pool.fetch(pool) do
      stats = Snakepit.Call.backend(handle).pool_stats(handle)

      errors = %{
        python_error: stats.python_errors,
        # Deprecated: the key before :errors was keyed by category.
        python: stats.python_errors,
        validation: stats.validation_errors,
        worker: stats.worker_errors,
        transport: stats.transport_errors,
        timeout: stats.timeouts + stats.queue_timeouts,
        pool: stats.rejected + stats.stopped
      }

      Map.put(stats, :errors, errors)
    end
  end

  @doc """
  The workers of a pool, ordered by id: `:worker_id`, `:os_pid`, `:state`
  (`:starting | :idle | :busy | :stopping`), `:in_flight` (calls written to
  it), `:running` (of those, the calls it runs now: at most the pool's
  `:concurrency`; the others wait in its pipe), `:requests` served,
  `:age_ms`, `:rss_bytes` (resident memory of the worker process, from
  `/proc`; `nil` if it cannot be read), and `:sessions` (sessions bound to
  it).

      iex> [first | _] = Snakepit.list_workers()
      iex> Map.keys(first) |> Enum.sort()
      [:age_ms, :in_flight, :os_pid, :requests, :rss_bytes, :running, :sessions, :state, :worker_id]
  """
  @spec list_workers(atom()) :: [map()] | {:error, Error.t()}
  def list_workers(pool \\ :default) do
    with {:ok, %{handle: handle}} <- Pool.fetch(pool) do
      Snakepit.Call.backend(handle).pool_workers(handle)
    end
  end

  @doc """
  Registers an Elixir function that the pool's Python tools may call by
  `name` with `ctx.call_elixir(name, **kwargs)` (see
  `Snakepit.ElixirTools`): `{module, function}`, called with the map of
  keyword arguments, or a 1-arity function. It replaces a function of the
  same name, and lasts as long as the pool's process (the pool option
  `:elixir_tools` registers functions from its start).

      iex> Snakepit.register_tool(:default, "double", fn %{"x" => x} -> {:ok, 2 * x} end)
      :ok
      iex> Snakepit.unregister_tool(:default, "double")
      :ok
  """
  @spec register_tool(atom(), String.t() | atom(), Snakepit.ElixirTools.fun_spec()) ::
          :ok | {:error, Error.t()}
  def register_tool(pool \\ :default, name, fun) do
    with {:ok, %{elixir_tools: tools}} <- Pool.fetch(pool),
         :ok <- python_pool(tools, pool) do
      Snakepit.ElixirTools.register(tools, name, fun)
    end
  end

  @doc """
  Removes the Elixir function registered under `name` for the pool's tools,
  if any (see `register_tool/3`). Later calls of it from Python raise an
  `ElixirError` of category `"validation"`.
  """
  @spec unregister_tool(atom(), String.t() | atom()) :: :ok | {:error, Error.t()}
  def unregister_tool(pool \\ :default, name) do
    with {:ok, %{elixir_tools: tools}} <- Pool.fetch(pool),
         :ok <- python_pool(tools, pool) do
      Snakepit.ElixirTools.unregister(tools, name)
    end
  end

  # A pool of an Elixir adapter has no Python tools to call Elixir.
  defp python_pool(nil, pool),
    do:
      {:error,
       Error.validation("pool #{inspect(pool)} runs an Elixir adapter: it has no Python tools")}

  defp python_pool(_tools, _pool), do: :ok

  @doc """
  Runs `fun` with Snakepit's configured pools started and ready, then stops
  them (and every worker process) before returning `fun`'s result. For
  scripts and `mix run`; see `Snakepit.Script` for the options and errors.

      Snakepit.run_as_script(fn -> Snakepit.execute!("add", %{a: 1, b: 2}) end)
  """
  @spec run_as_script((() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  defdelegate run_as_script(fun, opts \\ []), to: Snakepit.Script, as: :run
end
