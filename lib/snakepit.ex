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

  alias Snakepit.{Error, Native, Pool}

  @default_timeout 30_000
  @max_timeout Snakepit.Config.max_timeout()
  # After a timeout, `cancel` may report that the reply was already sent; it
  # is then in the mailbox or arriving. This bounds that wait, defensively.
  @reply_in_flight_wait 5_000

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

  Options:
  - `:pool` - the pool's name (default `:default`);
  - `:timeout` - milliseconds to wait for the answer, queueing included,
    or `:infinity` (default: the pool's `:timeout`, itself `30_000` by
    default). On timeout the worker
    is told to cancel and the caller gets a `:timeout` error; a late
    answer is dropped, never delivered. (An answer already on its way
    when the timer fires is returned instead: the call did complete.) (see "Timeouts and cancellation" in
    `Snakepit.Config`);
  - `:queue_timeout` - milliseconds the call may wait for a free worker
    (default: the pool's `:queue_timeout`, itself `:infinity` by default).
    Past it the call leaves the queue, or is taken back from the worker
    whose pipe it waits in (see "Pipelining" in `Snakepit.Config`), with a
    `:timeout` error whose details have `queue: true`;
  - `:session_id` - the session the call belongs to (a string of 1 to 256
    bytes), or `nil`; see "Sessions" below and `execute_in_session/4`;
  - `:affinity` - how a session's call picks its worker: `:strict`,
    `:hint` or `:fail_fast` (default: the pool's `:affinity`, itself
    `:strict`). Ignored without a `:session_id`;
  - `:correlation_id` - a string (1 to 128 bytes) that follows the call into
    the worker's logs, its telemetry events and its error's details (see
    `Snakepit.Correlation`; default: a new one);
  - `:retry` - retry the call after errors that say it never started
    (`Snakepit.Error.retryable?/1`), or in the listed categories, with
    backoff, within `:timeout`: `false` or options of `Snakepit.Retry.run/2`
    (default: the pool's `:retry`, itself `false`).

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
  def execute(command, args \\ %{}, opts \\ []), do: run(command, args, opts, false)

  defp run(command, args, opts, raising?) do
    pool = Keyword.get(opts, :pool, :default)

    case Snakepit.Correlation.from_opts(opts) do
      {:ok, correlation_id} ->
        command
        |> prepare(args, opts, pool, correlation_id)
        |> perform(raising?)
        |> with_correlation(correlation_id)

      {:error, _} = error ->
        error
    end
  end

  defp prepare(command, args, opts, pool, correlation_id) do
    with {:ok, entry} <- fetch_pool(pool),
         {:ok, tool} <- check_command(command),
         {:ok, args} <- check_args(args),
         timeout = Keyword.get(opts, :timeout, entry.timeout),
         :ok <- check_timeout(:timeout, timeout),
         queue_timeout = Keyword.get(opts, :queue_timeout, entry.queue_timeout),
         :ok <- check_timeout(:queue_timeout, queue_timeout),
         {:ok, session} <- session_route(opts, entry),
         {:ok, retry} <- retry_opts(Keyword.get(opts, :retry, entry.retry)) do
      {:ok,
       %{
         handle: entry.handle,
         pool: pool,
         tool: tool,
         args: args,
         session: session,
         correlation_id: correlation_id,
         timeout: timeout,
         queue_timeout: queue_timeout,
         retry: retry
       }}
    end
  end

  defp perform({:error, _} = error, _raising?), do: error

  defp perform({:ok, %{retry: nil} = c}, raising?), do: attempt(c, c.timeout, 1, raising?)

  defp perform({:ok, c}, raising?) do
    counter = :counters.new(1, [])

    Snakepit.Retry.run(
      fn budget ->
        :counters.add(counter, 1, 1)
        attempt(c, min_timeout(budget, c.timeout), :counters.get(counter, 1), raising?)
      end,
      Keyword.put(c.retry, :timeout, c.timeout)
    )
  end

  defp min_timeout(:infinity, t), do: t
  defp min_timeout(t, :infinity), do: t
  defp min_timeout(a, b), do: min(a, b)

  # One attempt: the call itself, inside its telemetry span when
  # `:telemetry` is loaded.
  defp attempt(c, timeout, n, raising?) do
    if Snakepit.Telemetry.enabled?() do
      metadata = %{
        pool: c.pool,
        command: c.tool,
        session_id: session_id(c.session),
        correlation_id: c.correlation_id,
        attempt: n
      }

      Snakepit.Telemetry.emit(
        [:snakepit, :call, :start],
        Snakepit.Telemetry.start_measurements(),
        metadata
      )

      started = System.monotonic_time()
      {result, meta} = call(c, timeout)
      emit_call_end(result, meta, started, metadata, raising?)
      result
    else
      c |> call(timeout) |> elem(0)
    end
  end

  defp emit_call_end(result, meta, started, metadata, raising?) do
    duration = System.monotonic_time() - started

    case {result, raising?} do
      {{:error, error}, true} ->
        error = Snakepit.Redact.redact(error)

        Snakepit.Telemetry.emit(
          [:snakepit, :call, :exception],
          %{duration: duration},
          Map.merge(metadata, %{kind: :error, reason: error, stacktrace: []})
        )

      _ ->
        {os_pid, queue_time, run_time} = meta || {nil, nil, nil}

        measurements = %{
          duration: duration,
          queue_time: native_time(queue_time),
          run_time: native_time(run_time)
        }

        {outcome, error} =
          case result do
            {:ok, _} -> {:ok, nil}
            {:error, error} -> {error.category, Snakepit.Redact.redact(error)}
          end

        metadata = Map.merge(metadata, %{worker_os_pid: os_pid, outcome: outcome, error: error})
        Snakepit.Telemetry.emit([:snakepit, :call, :stop], measurements, metadata)
        Snakepit.Telemetry.emit([:snakepit, :pool, :request], measurements, metadata)
    end
  end

  defp native_time(nil), do: nil
  defp native_time(ns), do: System.convert_time_unit(ns, :nanosecond, :native)

  defp session_id(nil), do: nil
  defp session_id({id, _affinity}), do: id

  defp with_correlation({:error, %Error{} = error}, correlation_id),
    do: {:error, Snakepit.Correlation.tag(error, correlation_id)}

  defp with_correlation(result, _correlation_id), do: result

  # make_ref/0 and the receive stay in one function so the VM only scans
  # messages that arrived after the ref was made (the receive optimization).
  # Returns the result and the answer's `{os_pid, queue_ns, run_ns}` (or nil).
  defp call(c, timeout) do
    queue_timeout = min_timeout(c.queue_timeout, timeout)
    tag = make_ref()
    %{handle: handle, tool: tool, args: args, session: session} = c

    submitted =
      case Native.submit(handle, tag, tool, args, session, nil, c.correlation_id) do
        :dirty -> Native.submit_dirty(handle, tag, tool, args, session, nil, c.correlation_id)
        other -> other
      end

    case submitted do
      {:error, reason} ->
        error = Error.from_native(reason)
        if error.details[:queued], do: queue_full(c, error)
        {{:error, error}, nil}

      accepted ->
        # {:ok, request_id} or {:ok, request_id, :new_session}
        request_id = elem(accepted, 1)
        if tuple_size(accepted) == 3, do: session_created(c)
        first_wait = min_timeout(queue_timeout, timeout)

        receive do
          {^tag, status, frame, offset, meta} -> {answer(status, frame, offset), meta}
          {^tag, :error, reason} -> {{:error, Error.from_native(reason)}, nil}
        after
          first_wait ->
            if first_wait == timeout do
              timed_out(handle, tag, request_id, tool, timeout)
            else
              queue_timed_out(handle, tag, request_id, tool, timeout, queue_timeout)
            end
        end
    end
  end

  @doc false
  # Shared with Snakepit.Stream.
  @spec session_created(map()) :: :ok
  def session_created(%{session: {id, _}, pool: pool}) do
    Snakepit.Telemetry.emit(
      [:snakepit, :session, :created],
      %{system_time: System.system_time()},
      %{pool: pool, session_id: id}
    )
  end

  @doc false
  @spec queue_full(map(), Error.t()) :: :ok
  def queue_full(c, error) do
    Snakepit.Telemetry.emit(
      [:snakepit, :pool, :queue_full],
      %{queued: error.details[:queued], limit: error.details[:limit]},
      %{pool: c.pool, command: c.tool, correlation_id: c.correlation_id}
    )
  end

  # The call waited `queue_timeout` ms: it leaves the queue, unless a worker
  # has it already; then it gets the rest of its `timeout`. A call waiting
  # in a worker's pipe behind another (pipelining) is asked back: it ends
  # with this same error (`{tag, :dequeued}`) if the worker gives it back
  # before starting it.
  defp queue_timed_out(handle, tag, request_id, tool, timeout, queue_timeout) do
    case Native.dequeue(handle, request_id) do
      :dequeued ->
        {queue_timeout_error(tool, queue_timeout), nil}

      _pending_or_started ->
        rest = if timeout == :infinity, do: :infinity, else: timeout - queue_timeout

        receive do
          {^tag, status, frame, offset, meta} -> {answer(status, frame, offset), meta}
          {^tag, :error, reason} -> {{:error, Error.from_native(reason)}, nil}
          {^tag, :dequeued} -> {queue_timeout_error(tool, queue_timeout), nil}
        after
          rest -> timed_out(handle, tag, request_id, tool, timeout, queue_timeout)
        end
    end
  end

  defp queue_timeout_error(tool, queue_timeout) do
    {:error,
     Error.timeout(
       "no worker was free for #{Error.excerpt(tool)} within #{queue_timeout} ms (:queue_timeout)",
       %{tool: tool, timeout: queue_timeout, queue: true, retryable: true}
     )}
  end

  defp timed_out(handle, tag, request_id, tool, timeout, queue_timeout \\ nil) do
    case Native.cancel(handle, request_id) do
      replied when replied == :replied ->
        receive do
          {^tag, status, frame, offset, meta} -> {answer(status, frame, offset), meta}
          {^tag, :error, reason} -> {{:error, Error.from_native(reason)}, nil}
          {^tag, :dequeued} -> {queue_timeout_error(tool, queue_timeout), nil}
        after
          @reply_in_flight_wait ->
            {{:error,
              Error.transport("the reply to #{Error.excerpt(tool)} was lost", %{tool: tool})}, nil}
        end

      cancelled when cancelled in [:cancelled, :running] ->
        queued = cancelled == :cancelled
        details = %{tool: tool, timeout: timeout, queue: queued}
        details = if queued, do: Map.put(details, :retryable, true), else: details

        {{:error,
          Error.timeout("no answer from #{Error.excerpt(tool)} within #{timeout} ms", details)},
         nil}
    end
  end

  # The NIF sends a worker's answer as the raw frame; it is decoded here, in
  # the caller (see native/snakepit_nif/src/codec.rs for why).
  defp answer(status, frame, offset) do
    case {status, Native.decode_frame(frame, offset)} do
      {:result, {:ok, result}} ->
        {:ok, result}

      # Any body, of any shape: from_python/1 makes an error of it.
      {:python_error, {:ok, body}} ->
        {:error, Error.from_python(body)}

      # Its shared-memory segments were over the pool's :shm_max_bytes.
      {_, {:refused, reason}} ->
        {:error, Error.from_native(reason)}

      {_, {:error, why}} ->
        {:error, Error.transport("the worker's answer could not be decoded: #{why}")}
    end
  end

  @doc """
  Like `execute/3`, but returns the result or raises `Snakepit.Error`.

      iex> Snakepit.execute!("add", %{a: 2, b: 3})
      5
  """
  @spec execute!(String.t() | atom(), map() | keyword(), [execute_opt()]) :: term()
  def execute!(command, args \\ %{}, opts \\ []) do
    case run(command, args, opts, true) do
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

    with {:ok, entry} <- fetch_pool(pool),
         {:ok, {id, _}} <- session_route([session_id: session_id], entry) do
      if Native.end_session(entry.handle, id) do
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
    with {:ok, %{handle: handle}} <- fetch_pool(pool) do
      Native.pool_sessions(handle)
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

    with {:ok, entry} <- fetch_pool(pool),
         {:ok, {id, _}} <- session_route([session_id: session_id], entry) do
      case Native.pool_session(entry.handle, id) do
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
    with :ok <- check_timeout(:timeout, timeout) do
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
  and ran, over the last 60 to 120 s, from native HDR histograms; `nil`
  before any call), and
  `:errors`, the error outcomes by category of `Snakepit.Error`:
  `%{python: _, validation: _, worker: _, transport: _, timeout: _,
  pool: _}`.

  Calls refused in the caller before they reach the pool (an unknown pool,
  a command that is not a string) are not counted. Returns
  `{:error, %Snakepit.Error{category: :pool}}` for an unknown pool.
  """
  @spec get_stats(atom()) :: map() | {:error, Error.t()}
  def get_stats(pool \\ :default) do
    with {:ok, %{handle: handle}} <- fetch_pool(pool) do
      stats = Native.pool_stats(handle)

      errors = %{
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
  it), `:requests` served, `:age_ms`, `:rss_bytes` (resident memory of
  the worker process, from `/proc`; `nil` if it cannot be read), and
  `:sessions` (sessions bound to it).

      iex> [first | _] = Snakepit.list_workers()
      iex> Map.keys(first) |> Enum.sort()
      [:age_ms, :in_flight, :os_pid, :requests, :rss_bytes, :sessions, :state, :worker_id]
  """
  @spec list_workers(atom()) :: [map()] | {:error, Error.t()}
  def list_workers(pool \\ :default) do
    with {:ok, %{handle: handle}} <- fetch_pool(pool) do
      Native.pool_workers(handle)
    end
  end

  @doc """
  Runs `fun` with Snakepit's configured pools started and ready, then stops
  them (and every worker process) before returning `fun`'s result. For
  scripts and `mix run`:

      Snakepit.run_as_script(fn -> Snakepit.execute!("add", %{a: 1, b: 2}) end)

  Options: `:timeout` for each pool to become ready (default `30_000`),
  `:halt` to stop the VM afterwards with status 0, or 1 if `fun` raised or
  did not run (default `false`).

  If Snakepit cannot start or a pool is not ready in time, `fun` does not
  run: the application is stopped and `{:error, %Snakepit.Error{}}` is
  returned (with `:halt`, printed and the VM halted with status 1). Its
  category is `:timeout` for a pool that was not ready within `:timeout`,
  `:validation` for a configuration that `Snakepit.Config.pools_from_env/1`
  refuses or a pool option refused when the pool starts, and `:pool` for a
  pool that could not start its workers; `details.pool` names the pool when
  one is at fault. (A `fun` that itself returns such a tuple cannot be told
  apart; match on `details.pool` or have `fun` return something else.)
  """
  @spec run_as_script((() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  def run_as_script(fun, opts \\ []) when is_function(fun, 0) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    halt? = Keyword.get(opts, :halt, false)

    case start_for_script(timeout) do
      :ok ->
        run_script(fun, halt?)

      {:error, %Error{} = error} ->
        _ = Application.stop(:snakepit)

        if halt? do
          IO.puts(:stderr, "Snakepit.run_as_script/2: " <> to_string(error))
          System.halt(1)
        end

        {:error, error}
    end
  end

  defp run_script(fun, halt?) do
    fun.()
  rescue
    e ->
      if halt? do
        IO.puts(:stderr, Exception.format(:error, e, __STACKTRACE__))
        _ = Application.stop(:snakepit)
        System.halt(1)
      end

      reraise e, __STACKTRACE__
  after
    _ = Application.stop(:snakepit)
    if halt?, do: System.halt(0)
  end

  # Starts the application and waits for each configured pool.
  defp start_for_script(timeout) do
    case Application.ensure_all_started(:snakepit) do
      {:ok, _} ->
        # The env was checked by the application's start, unless it was
        # already running and the env changed since.
        with {:ok, pools} <- Snakepit.Config.pools_from_env(Application.get_all_env(:snakepit)) do
          Enum.reduce_while(pools, :ok, fn {name, _opts}, :ok ->
            case script_await(name, timeout) do
              :ok -> {:cont, :ok}
              {:error, error} -> {:halt, {:error, error}}
            end
          end)
        end

      {:error, reason} ->
        {:error, script_start_error(reason)}
    end
  end

  defp script_await(name, timeout) do
    await_ready(name, timeout)
  catch
    # The pool stopped while we waited (e.g. :max_start_failures).
    :exit, reason ->
      {:error,
       Error.pool(
         "pool #{inspect(name)} stopped before it was ready: " <> Exception.format_exit(reason),
         %{pool: name}
       )}
  end

  # `Application.ensure_all_started/1`'s reason, as an error naming the pool
  # at fault when there is one.
  defp script_start_error({:snakepit, {%Error{} = error, {_mod, :start, _args}}}), do: error

  defp script_start_error(
         {:snakepit,
          {{:shutdown, {:failed_to_start_child, {Pool, name}, reason}}, {_mod, :start, _}}}
       ) do
    case reason do
      %Error{message: message} = error ->
        message =
          if message =~ inspect(name), do: message, else: "pool #{inspect(name)}: " <> message

        %{error | message: message, details: Map.put(error.details, :pool, name)}

      other ->
        Error.pool(
          "pool #{inspect(name)} could not start: " <> Exception.format_exit(other),
          %{pool: name}
        )
    end
  end

  defp script_start_error({app, reason}) do
    Error.pool(
      "Snakepit could not start (application #{inspect(app)}): " <>
        Application.format_error(reason),
      %{application: app}
    )
  end

  @doc false
  # Shared with Snakepit.Stream: the pool's entry, or a :pool error.
  @spec fetch_pool(term()) :: {:ok, Pool.entry()} | {:error, Error.t()}
  def fetch_pool(pool) do
    case Pool.lookup(pool) do
      nil -> {:error, Error.pool("no pool named #{Error.excerpt(pool)} is running", %{pool: pool})}
      found -> {:ok, found}
    end
  end

  @doc false
  @spec check_command(term()) :: {:ok, String.t()} | {:error, Error.t()}
  def check_command(command) when is_binary(command), do: {:ok, command}

  def check_command(command) when is_atom(command) and command not in [nil, true, false],
    do: {:ok, Atom.to_string(command)}

  def check_command(command),
    do:
      {:error,
       Error.validation("the command must be a string or an atom, got: #{Error.excerpt(command)}")}

  @doc false
  @spec check_args(term()) :: {:ok, map()} | {:error, Error.t()}
  def check_args(args) when is_map(args), do: {:ok, args}

  def check_args(args) when is_list(args) do
    if Keyword.keyword?(args),
      do: {:ok, Map.new(args)},
      else:
        {:error,
         Error.validation("args must be a map or a keyword list, got: #{Error.excerpt(args)}")}
  end

  def check_args(args),
    do:
      {:error,
       Error.validation("args must be a map or a keyword list, got: #{Error.excerpt(args)}")}

  # Checked before anything is submitted: past Config.max_timeout/0 the VM
  # cannot wait (`receive ... after` raises), and the answer would be left
  # in the caller's mailbox.
  @doc false
  @spec check_timeout(atom(), term()) :: :ok | {:error, Error.t()}
  def check_timeout(_, :infinity), do: :ok

  def check_timeout(_, t) when is_integer(t) and t >= 0 and t <= @max_timeout, do: :ok

  def check_timeout(key, t),
    do:
      {:error,
       Error.validation(
         "the #{inspect(key)} must be :infinity or an integer from 0 to #{@max_timeout} (ms), " <>
           "got: #{Error.excerpt(t)}",
         %{option: key}
       )}

  @doc false
  # `nil` (no session) or `{session_id, affinity}`, as the native submit takes it.
  @spec session_route(keyword(), Pool.entry()) ::
          {:ok, {String.t(), affinity()} | nil} | {:error, Error.t()}
  def session_route(opts, entry) do
    affinity = Keyword.get(opts, :affinity, entry.affinity)

    with :ok <- check_affinity(affinity) do
      case Keyword.get(opts, :session_id) do
        nil -> {:ok, nil}
        id -> with :ok <- check_session_id(id), do: {:ok, {id, affinity}}
      end
    end
  end

  @doc false
  # `nil` (no retry) or the options of Snakepit.Retry.run/2.
  @spec retry_opts(term()) :: {:ok, keyword() | nil} | {:error, Error.t()}
  def retry_opts(false), do: {:ok, nil}
  def retry_opts(nil), do: {:ok, nil}
  def retry_opts(true), do: {:ok, []}

  def retry_opts(opts) when is_list(opts) do
    if Keyword.keyword?(opts) and not Keyword.has_key?(opts, :timeout),
      do: {:ok, opts},
      else: retry_refused(opts)
  end

  def retry_opts(other), do: retry_refused(other)

  defp retry_refused(value),
    do:
      {:error,
       Error.validation(
         "the :retry option must be false, true or a keyword list of Snakepit.Retry options " <>
           "(its total time is the call's :timeout), got: #{Error.excerpt(value)}",
         %{option: :retry}
       )}

  @max_session_id 256

  defp check_session_id(id) when is_binary(id) and byte_size(id) in 1..@max_session_id, do: :ok

  defp check_session_id(id),
    do:
      {:error,
       Error.validation(
         "the :session_id must be a string of 1 to #{@max_session_id} bytes, got: " <>
           Error.excerpt(id),
         %{option: :session_id}
       )}

  defp check_affinity(a) when a in [:strict, :hint, :fail_fast], do: :ok

  defp check_affinity(a),
    do:
      {:error,
       Error.validation(
         "the :affinity must be :strict, :hint or :fail_fast, got: #{Error.excerpt(a)}",
         %{option: :affinity}
       )}
end
