defmodule Snakepit.Pool do
  @moduledoc """
  A supervised pool of long-lived worker processes running one Python adapter.

      children = [
        {Snakepit.Pool, name: :ml, size: 4, adapter: "my_pkg.model.Adapter",
         python_path: ["/srv/ml"]}
      ]

  Options are documented in `Snakepit.Config`. Call the pool with
  `Snakepit.execute/3`.

  ## Design

  A pool has two halves, and only one of them is a process.

  The **data plane** is native (Rust, `native/snakepit_nif`): the worker OS
  processes, their pipes, the threads that serve them, the FIFO queue of
  waiting calls and the choice of a free worker. `Snakepit.execute/3` runs in
  the caller's own process: it encodes the call, hands it to the native pool
  (a few microseconds, never blocking) and waits in `receive` for a message
  tagged with a reference it made. No GenServer sits on that path, so calls
  from many processes proceed in parallel and the pool has no mailbox to
  back up.

  The **control plane** is this GenServer. It owns the native pool (which
  dies with it: the native side monitors this process and kills the workers
  if it goes away), starts workers, restarts them with backoff when they
  exit, forwards what they print to `Logger`, and answers `await_ready/2`.
  It starts the pool's `Snakepit.ElixirTools` process too, which runs the
  Elixir functions that tools call (`ctx.call_elixir`).
  The native side reports to it with messages
  `{:snakepit_worker, worker_id, event, data}`.

  The native handle is published in `:persistent_term` under the pool's name,
  which is how callers find it without a process lookup.

  `docs/architecture.md` follows one call through every function and file
  it passes, and says where each behaviour (queueing, dispatch, cancel,
  recycling, restart, orphans) is decided.

  ## Startup

  Workers are spawned `:startup_batch_size` at a time; each handshake lets
  the next one start. `start_link/1` returns when the first worker has
  finished its handshake, so a pool whose adapter cannot be imported fails
  to start with the Python error in its message, instead of being restarted
  forever by its supervisor. Calls made while other workers are still
  starting wait in the queue; `Snakepit.await_ready/2` waits for all.

  ## Failures

  The native side answers the calls of a worker that dies; this process
  restarts it at once, and with backoff if it fails again before its
  handshake (50 ms doubling to 10 s).
  A slot whose worker fails to start `:max_start_failures` times in a row
  stops the pool. It also drives the timers of the data plane: heartbeats
  (`Snakepit.Native.pool_heartbeat/2`), the grace period of cancelled calls
  (the native side reports each with a `:cancelled` event), and a tick
  (`Snakepit.Native.pool_maintain/1`) with which the native side retires
  workers past `:max_age` or `:max_memory_mb`. The decisions themselves are
  native; this process only keeps time.

  ## Stopping

  On shutdown the pool stops taking calls, answers queued ones with a
  `:pool` error, closes every worker's stdin (the bridge exits at EOF after
  its current call), waits up to `:shutdown_timeout`, then sends SIGTERM to
  every worker's process group, and SIGKILL a second later. Each worker's
  shepherd (`native/snakepit_shepherd`) then kills whatever the worker
  started and reaps it all. If the BEAM itself dies, the shepherds see
  their lifeline close and do the same.
  """

  use GenServer
  require Logger

  alias Snakepit.{Config, Error, Native, Telemetry}

  @max_backoff 10_000
  @kill_wait 1_000
  @maintain_interval 1_000

  @doc false
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    # Supervisor reports print the start arguments: the :env values (often
    # secrets) travel inside a function, which prints as #Fun<...>.
    opts =
      case Keyword.fetch(opts, :env) do
        {:ok, env} when not is_function(env, 0) -> Keyword.put(opts, :env, fn -> env end)
        _ -> opts
      end

    %{
      id: {__MODULE__, Keyword.get(opts, :name, :default)},
      start: {__MODULE__, :start_link, [opts]},
      shutdown:
        min(
          Keyword.get(opts, :shutdown_timeout, 5_000) + 3 * @kill_wait + 5_000,
          Config.max_timeout()
        )
    }
  end

  @doc """
  Starts a pool and links it to the caller. See `Snakepit.Config` for options.

  Returns `{:error, %Snakepit.Error{}}` for invalid options and for a pool
  whose first worker cannot start (the Python error is in the message).
  """
  @spec start_link(keyword()) :: GenServer.on_start() | {:error, Error.t()}
  def start_link(opts) do
    case Config.validate(opts) do
      {:ok, %Config{adapter: adapter} = config} when is_atom(adapter) and adapter != nil ->
        Snakepit.BeamPool.start_link(config)

      validated ->
        start_python(validated)
    end
  end

  defp start_python(validated) do
    with {:ok, config} <- validated,
         :ok <- native_ready(),
         {:ok, config} <- find_program(config) do
      GenServer.start_link(__MODULE__, config, name: via(config.name))
    end
  end

  @typedoc """
  What callers need of a running pool: its native handle, call defaults,
  and its `Snakepit.ElixirTools` process.
  """
  @type entry :: %{
          handle: reference() | Snakepit.BeamPool.handle(),
          elixir_tools: pid() | nil,
          queue_timeout: timeout(),
          timeout: timeout(),
          affinity: :strict | :hint | :fail_fast,
          stream_window: pos_integer(),
          retry: false | keyword()
        }

  @doc """
  The native handle and the call defaults (`:queue_timeout`, `:timeout`,
  `:affinity`, `:stream_window`) of a running pool, or `nil`. Callers read
  it from `:persistent_term`, not from this process.
  """
  @spec lookup(atom()) :: entry() | nil
  def lookup(name), do: :persistent_term.get({__MODULE__, name}, nil)

  @doc """
  Like `lookup/1`, but a pool that is not running is a `:pool` error.

      iex> {:error, e} = Snakepit.Pool.fetch(:no_such_pool)
      iex> e.category
      :pool
  """
  @spec fetch(term()) :: {:ok, entry()} | {:error, Error.t()}
  def fetch(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      nil -> {:error, Error.pool("no pool named #{Error.excerpt(name)} is running", %{pool: name})}
      entry -> {:ok, entry}
    end
  end

  @doc """
  Waits until every worker of the pool has finished its handshake.
  """
  @spec await_ready(atom(), timeout()) :: :ok | {:error, Error.t()}
  def await_ready(name, timeout) do
    GenServer.call(via(name), :await_ready, timeout)
  catch
    :exit, {:timeout, _} ->
      {:error,
       Error.timeout("pool #{inspect(name)} was not ready within #{timeout} ms", %{pool: name})}

    :exit, {:noproc, _} ->
      {:error, Error.pool("no pool named #{inspect(name)} is running", %{pool: name})}
  end

  defp via(name), do: {:via, Registry, {Snakepit.Registry, name}}

  defp native_ready do
    case Native.status() do
      :ok ->
        if File.exists?(Native.shepherd()),
          do: :ok,
          else:
            {:error,
             Error.pool(
               "Snakepit's worker shepherd #{Native.shepherd()} does not exist: it is built " <>
                 "by `mix compile`. Rebuild with `mix compile --force`."
             )}

      {:error, message} ->
        {:error, Error.pool(message)}
    end
  end

  # The program workers run, as an absolute path: the :command's, else :python.
  defp find_program(%Config{command: [program | args]} = config) do
    case Config.find_command(program, config.cwd) do
      {:ok, path} ->
        {:ok, %{config | command: [path | args]}}

      {:error, why} ->
        problem =
          case why do
            :not_on_path ->
              "was not found on the PATH"

            :not_found ->
              "does not exist (a relative path is taken from :cwd, else the BEAM's " <>
                "working directory, #{config.cwd || File.cwd!()})"

            :not_executable ->
              "is not an executable file (run a script with its interpreter, " <>
                "e.g. [\"node\", #{inspect(program)}])"
          end

        {:error,
         Error.validation("invalid pool option :command: #{inspect(program)} " <> problem, %{
           option: :command
         })}
    end
  end

  defp find_program(config) do
    with {:ok, python} <- find_python(config.python), do: {:ok, %{config | python: python}}
  end

  defp find_python(python) do
    with {:error, why} <- Config.find_python(python) do
      problem =
        case why do
          :not_on_path -> "#{inspect(python)} was not found on the PATH"
          :not_found -> "#{inspect(python)} was not found"
          venv_problem -> Snakepit.Venv.describe(python, venv_problem)
        end

      {:error, Error.validation("invalid pool option :python: " <> problem, %{option: :python})}
    end
  end

  ## Server

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)

    # The functions workers may call (ctx.call_elixir) run under their own
    # process, linked to this one, which the native side sends those calls.
    {:ok, tools} =
      Snakepit.ElixirTools.start_link(
        pool: config.name,
        tools: config.elixir_tools,
        timeout: config.elixir_tool_timeout
      )

    native =
      Map.merge(Config.native_options(config), %{
        shepherd: Native.shepherd(),
        elixir_handler: tools
      })

    handle = Native.pool_new(self(), native)
    :ok = Snakepit.ElixirTools.attach(tools, handle)

    state = %{
      config: config,
      handle: handle,
      elixir_tools: tools,
      phase: :starting,
      next_id: 1,
      # worker id => %{slot, os_pid, status, stderr_tail, startup_error}
      workers: %{},
      # slots waiting for their turn to start (see :startup_batch_size)
      pending: Enum.to_list(1..config.size),
      # slot => consecutive failed starts, for backoff and :max_start_failures
      failures: Map.new(1..config.size, &{&1, 0}),
      waiting: [],
      startup_error: nil
    }

    state = start_pending(state)
    deadline = System.monotonic_time(:millisecond) + config.startup_timeout

    case await_first_worker(state, deadline) do
      {:ok, state} ->
        :persistent_term.put({__MODULE__, config.name}, %{
          handle: handle,
          elixir_tools: tools,
          queue_timeout: config.queue_timeout,
          timeout: config.timeout,
          affinity: config.affinity,
          stream_window: config.stream_window,
          retry: config.retry
        })

        schedule(:heartbeat, config.heartbeat_interval)

        :ok =
          if config.max_age != :infinity or config.max_memory_mb != :infinity or
               config.session_ttl != :infinity,
             do: schedule(:maintain, @maintain_interval),
             else: :ok

        {:ok, %{state | phase: :running}}

      {:error, error, state} ->
        :ok = Native.pool_close(handle)
        :ok = Native.pool_kill_all(handle)
        _ = drain_exits(state, 5_000)
        {:stop, error}
    end
  end

  # How often stalled workers are looked for while the pool has work: half
  # of :reclaim_after, so a call waits behind a stalled one at most 1.5 x
  # :reclaim_after before it is asked back. Never without pipelining:
  # nothing can wait behind a call.
  defp reclaim_tick(%{pipeline_depth: 1}), do: :infinity
  defp reclaim_tick(%{reclaim_after: :infinity}), do: :infinity
  defp reclaim_tick(%{reclaim_after: ms}), do: max(div(ms, 2), 1)

  @spec schedule(term(), timeout()) :: :ok
  defp schedule(_msg, :infinity), do: :ok

  defp schedule(msg, ms) do
    _ = Process.send_after(self(), msg, ms)
    :ok
  end

  # Starts pending slots while fewer than :startup_batch_size workers are starting.
  defp start_pending(%{pending: []} = state), do: state

  defp start_pending(%{pending: [slot | rest]} = state) do
    starting = Enum.count(state.workers, fn {_, w} -> w.status == :starting end)

    if starting < state.config.startup_batch_size and is_nil(state.startup_error) do
      %{state | pending: rest} |> start_worker(slot) |> start_pending()
    else
      state
    end
  end

  defp await_first_worker(%{startup_error: %Error{} = error} = state, _deadline),
    do: {:error, error, state}

  defp await_first_worker(state, deadline) do
    if Enum.any?(state.workers, fn {_, w} -> w.status == :ready end) do
      {:ok, state}
    else
      wait = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {:snakepit_worker, _id, _event, _data} = msg ->
          await_first_worker(handle_event(msg, state), deadline)
      after
        wait ->
          error =
            Error.pool(
              "pool #{inspect(state.config.name)} could not start: no worker finished its " <>
                "handshake within #{state.config.startup_timeout} ms (:startup_timeout)",
              %{pool: state.config.name}
            )

          {:error, error, state}
      end
    end
  end

  @impl true
  def handle_call(:await_ready, from, state) do
    if all_ready?(state),
      do: {:reply, :ok, state},
      else: {:noreply, %{state | waiting: [from | state.waiting]}}
  end

  @impl true
  def handle_info({:snakepit_worker, _id, _event, _data} = msg, state) do
    {:noreply, msg |> handle_event(state) |> reply_if_ready()}
  end

  def handle_info({:snakepit_circuit, circuit, retry_after_ms, failures}, state) do
    name = state.config.name
    measurements = %{system_time: System.system_time()}

    case circuit do
      :open ->
        Logger.warning(
          "[snakepit] pool #{inspect(name)}: circuit breaker open after #{failures} worker " <>
            "failures in a row; calls fail at once for #{retry_after_ms} ms",
          snakepit_pool: name
        )

        measurements =
          Map.merge(measurements, %{failures: failures, retry_after_ms: retry_after_ms})

        Telemetry.emit([:snakepit, :circuit, :open], measurements, %{pool: name})

      :half_open ->
        Telemetry.emit([:snakepit, :circuit, :half_open], measurements, %{pool: name})

      :closed ->
        Logger.info("[snakepit] pool #{inspect(name)}: circuit breaker closed", snakepit_pool: name)
        Telemetry.emit([:snakepit, :circuit, :close], measurements, %{pool: name})
    end

    {:noreply, state}
  end

  def handle_info({:restart, slot}, state) do
    {:noreply, start_worker(state, slot)}
  end

  def handle_info({:expire, worker_id, request_id}, state) do
    case Native.pool_expire(state.handle, worker_id, request_id) do
      :killed ->
        Logger.warning(
          "[snakepit] killed worker #{worker_id} of pool #{inspect(state.config.name)}: " <>
            "it was still running a cancelled call #{state.config.cancel_grace} ms later " <>
            "(:cancel_grace)"
        )

      :ok ->
        :ok
    end

    {:noreply, state}
  end

  def handle_info(:heartbeat, state) do
    for id <- Native.pool_heartbeat(state.handle, state.config.heartbeat_misses) do
      Logger.warning(
        "[snakepit] killed worker #{id} of pool #{inspect(state.config.name)}: it missed " <>
          "#{state.config.heartbeat_misses} heartbeats in a row"
      )
    end

    schedule(:heartbeat, state.config.heartbeat_interval)
    {:noreply, state}
  end

  # Ticks only while the pool has calls: the native side says when it found
  # none (then the ticks stop), and sends :snakepit_reclaim on the next
  # submit to start them again.
  def handle_info(msg, state) when msg in [:reclaim, :snakepit_reclaim] do
    case reclaim_tick(state.config) do
      :infinity ->
        :ok

      tick ->
        if Native.pool_reclaim(state.handle, state.config.reclaim_after),
          do: schedule(:reclaim, tick)
    end

    {:noreply, state}
  end

  # The native side decides which worker :max_age or :max_memory_mb retires.
  def handle_info(:maintain, state) do
    {_retired, expired} = Native.pool_maintain(state.handle)

    for session_id <- expired do
      Telemetry.emit(
        [:snakepit, :session, :cleanup],
        %{system_time: System.system_time()},
        %{pool: state.config.name, session_id: session_id, reason: :expired}
      )
    end

    schedule(:maintain, @maintain_interval)
    {:noreply, state}
  end

  def handle_info({:EXIT, _pid, reason}, state) do
    {:stop, reason, state}
  end

  @impl true
  def terminate(_reason, state) do
    _ = :persistent_term.erase({__MODULE__, state.config.name})
    :ok = Native.pool_close(state.handle)
    state = drain_exits(state, state.config.shutdown_timeout)
    state = if map_size(state.workers) > 0, do: stop_all(state, :pool_terminate_all), else: state
    _ = if map_size(state.workers) > 0, do: stop_all(state, :pool_kill_all)
    :ok
  end

  # What :sys.get_status/1 and the crash report of this process show: the
  # values of the pool's :env (which may hold secrets) are redacted, in the
  # state and wherever else they appear (the last message, the reason, the
  # sys log). OTP 25 calls format_status/1, and older OTPs format_status/2.
  @doc false
  @spec format_status(map()) :: map()
  def format_status(status), do: Map.new(status, fn {key, value} -> {key, Config.redact(value)} end)

  @impl true
  def format_status(_reason, [_pdict, state]), do: [data: [{~c"State", Config.redact(state)}]]

  defp stop_all(state, how) do
    :ok = apply(Native, how, [state.handle])
    drain_exits(state, @kill_wait)
  end

  ## Worker events

  defp shm_threshold(:infinity), do: "0"
  defp shm_threshold(bytes), do: Integer.to_string(bytes)

  defp start_worker(state, slot) do
    %{config: config} = state
    id = state.next_id
    priv_python = priv_python()

    env =
      [
        {"SNAKEPIT_MAX_FRAME_BYTES", Integer.to_string(config.max_frame_bytes)},
        {"SNAKEPIT_SHM_THRESHOLD", shm_threshold(config.shm_threshold)},
        {"SNAKEPIT_CONCURRENCY", Integer.to_string(config.concurrency)},
        {"SNAKEPIT_ELIXIR_TIMEOUT_MS", Integer.to_string(config.elixir_tool_timeout)},
        {"SNAKEPIT_POOL", to_string(config.name)},
        {"SNAKEPIT_WORKER_ID", Integer.to_string(id)}
      ] ++ worker_env(config)

    {program, argv} =
      case config.command do
        nil ->
          # A script run by absolute path, not `-m snakepit_bridge`: `-m` puts the
          # worker's cwd first on sys.path, where a `snakepit_bridge` or a
          # `msgpack.py` would shadow ours (docs/python.md).
          launcher = Path.join([priv_python, "launcher", "snakepit_worker.py"])
          {config.python, [launcher, "--adapter", config.adapter]}

        [program | args] ->
          {program, args}
      end

    state = %{state | next_id: id + 1}

    case Native.pool_start_worker(state.handle, id, program, argv, env, config.cwd) do
      {:ok, os_pid} ->
        worker = %{
          slot: slot,
          os_pid: os_pid,
          status: :starting,
          stderr_tail: [],
          startup_error: nil
        }

        %{state | workers: Map.put(state.workers, id, worker)}

      {:error, reason} ->
        message = "could not spawn #{program} for pool #{inspect(config.name)}: #{reason}"
        Logger.error("[snakepit] " <> message)

        if state.phase == :starting do
          %{state | startup_error: Error.pool(message, %{pool: config.name})}
        else
          state
          |> schedule_restart(slot)
          |> give_up_if_failing(%{slot: slot, startup_error: Error.pool(message), stderr_tail: []})
        end
    end
  end

  # :python_path, the bridge, then the PYTHONPATH the worker would have had:
  # the pool's :env's (which extends the path rather than replacing it, or
  # the bridge could not be imported), else the BEAM's. Empty entries are
  # dropped: Python reads one as the working directory (docs/python.md).
  @doc """
  The environment a worker of `config` gets besides the BEAM's and the
  per-worker `SNAKEPIT_` variables: `PYTHONPATH` (see below),
  `PYTHONUNBUFFERED=1`, and the pool's `:env`; only the `:env` in a pool
  that runs a `:command`. `mix snakepit.doctor` runs
  Python with it, to see what the workers will see.
  """
  @spec worker_env(Config.t()) :: [{String.t(), String.t()}]
  def worker_env(%Config{command: [_ | _]} = config), do: config.env

  def worker_env(config) do
    [
      {"PYTHONPATH", worker_pythonpath(config, priv_python())},
      {"PYTHONUNBUFFERED", "1"}
    ] ++ Enum.reject(config.env, &match?({"PYTHONPATH", _}, &1))
  end

  @doc """
  The names of the pools running on this node.
  """
  @spec names() :: [atom()]
  def names do
    for {{__MODULE__, name}, _entry} <- :persistent_term.get(), do: name
  end

  defp priv_python, do: Path.expand(Path.join(:code.priv_dir(:snakepit), "python"))

  defp worker_pythonpath(config, priv_python) do
    inherited =
      case for({"PYTHONPATH", value} <- config.env, do: value) do
        [] -> System.get_env("PYTHONPATH", "")
        values -> List.last(values)
      end

    (config.python_path ++ [priv_python] ++ String.split(inherited, ":"))
    |> Enum.reject(&(&1 == ""))
    |> Enum.join(":")
  end

  defp handle_event({:snakepit_worker, id, event, data}, state) do
    case Map.fetch(state.workers, id) do
      {:ok, worker} -> worker_event(event, decode_body(data), id, worker, state)
      :error -> state
    end
  end

  # Frame-carrying events hold the raw frame; bodies are decoded here, in a
  # process (see native/snakepit_nif/src/codec/mod.rs for why), as
  # `{:frame, {:ok, body} | {:error, why}}`. A body is the worker's data, of
  # any shape: each clause of worker_event/5 checks the shape it uses, and
  # one that does not fit is the worker breaking the protocol, never a crash
  # of this process.
  defp decode_body({:msgpack, frame, offset}), do: {:frame, Native.decode_frame(frame, offset)}
  defp decode_body(data), do: data

  # The native side checked the handshake (protocol version included)
  # before it reported the worker ready; the body is not used here.
  defp worker_event(:ready, _info, id, worker, state) do
    failures = Map.put(state.failures, worker.slot, 0)
    metadata = %{pool: state.config.name, worker_id: id, os_pid: worker.os_pid}
    measurements = %{system_time: System.system_time()}
    Telemetry.emit([:snakepit, :worker, :start], measurements, metadata)

    %{state | failures: failures}
    |> put_worker(id, %{worker | status: :ready})
    |> start_pending()
  end

  defp worker_event(:startup_error, body, id, worker, state) do
    error = startup_error(state, body)
    Logger.error("[snakepit] worker #{id}: #{error.message}")
    state = put_worker(state, id, %{worker | startup_error: error})

    if state.phase == :starting and is_nil(state.startup_error),
      do: %{state | startup_error: error},
      else: state
  end

  defp worker_event(:exit, details, id, worker, state) do
    state = %{state | workers: Map.delete(state.workers, id)}
    exit_telemetry(state, id, worker, details)

    cond do
      state.phase == :stopping ->
        state

      details[:recycled] != nil ->
        state |> start_worker(worker.slot) |> start_pending()

      state.phase == :starting and worker.status != :ready ->
        %{state | startup_error: state.startup_error || early_exit_error(state, worker, details)}

      true ->
        log_exit(state, id, worker, details)
        state |> schedule_restart(worker.slot) |> start_pending() |> give_up_if_failing(worker)
    end
  end

  defp worker_event(:cancelled, request_id, id, _worker, state) do
    schedule({:expire, id, request_id}, state.config.cancel_grace)
    state
  end

  defp worker_event(:stderr, chunk, id, worker, state) do
    lines = chunk |> String.split("\n", trim: true)
    prefix = "[snakepit #{state.config.name}/#{id}] "

    Enum.each(
      lines,
      &Logger.info(prefix <> &1, snakepit_pool: state.config.name, snakepit_worker: id)
    )

    tail = Enum.take(Enum.reverse(lines) ++ worker.stderr_tail, 20)
    put_worker(state, id, %{worker | stderr_tail: tail})
  end

  defp worker_event(
         :log,
         {:frame, {:ok, %{"level" => level, "logger" => logger, "message" => message} = body}},
         id,
         _worker,
         state
       )
       when is_binary(level) and is_binary(logger) and is_binary(message) do
    metadata = [snakepit_pool: state.config.name, snakepit_worker: id]

    metadata =
      case body do
        %{"correlation_id" => cid} when is_binary(cid) -> [{:correlation_id, cid} | metadata]
        _ -> metadata
      end

    Logger.log(
      log_level(level),
      "[snakepit #{state.config.name}/#{id}] #{logger}: #{message}",
      metadata
    )

    state
  end

  defp worker_event(:log, {:frame, body}, id, worker, state) do
    protocol_warning(state, id, worker, "log", body, "a map of string level, logger and message")
  end

  defp worker_event(:dropped_output, lines, id, _worker, state) when is_integer(lines) do
    Logger.warning(
      "[snakepit] worker #{id} of pool #{inspect(state.config.name)} writes output faster " <>
        "than it can be logged: dropped #{lines} lines (see :dropped_output_lines in " <>
        "Snakepit.get_stats/1)",
      snakepit_pool: state.config.name,
      snakepit_worker: id
    )

    state
  end

  # An event this version does not know (the native side is newer): ignored.
  defp worker_event(event, _data, id, _worker, state) do
    Logger.warning(
      "[snakepit] ignored an unknown event #{inspect(event)} of worker #{id} of pool " <>
        inspect(state.config.name)
    )

    state
  end

  defp exit_telemetry(state, id, worker, details) do
    if Telemetry.enabled?() do
      measurements = %{system_time: System.system_time()}
      base = %{pool: state.config.name, worker_id: id, os_pid: worker.os_pid}

      stopped =
        Map.merge(base, %{
          status: details[:status],
          signal: details[:signal],
          reason: details[:recycled] || details[:reason]
        })

      event = if details[:recycled], do: :recycle, else: :exit
      Telemetry.emit([:snakepit, :worker, event], measurements, stopped)
    end
  end

  # A frame of the wrong shape that reached this process: the worker broke
  # the protocol. (The native side checks shapes too, and kills such a
  # worker; this is the defence of last resort.) Logged once, then ignored.
  defp protocol_warning(state, id, worker, kind, body, expected) do
    Logger.warning(
      "[snakepit] worker #{id} (os pid #{worker.os_pid}) of pool #{inspect(state.config.name)} " <>
        "sent a malformed #{kind} frame, ignored: " <> malformed(body, expected),
      snakepit_pool: state.config.name,
      snakepit_worker: id
    )

    state
  end

  defp malformed({:ok, body}, expected), do: "expected #{expected}, got: #{Error.excerpt(body)}"
  defp malformed({:error, why}, _expected), do: "its body could not be decoded: #{why}"

  defp put_worker(state, id, worker), do: %{state | workers: Map.put(state.workers, id, worker)}

  defp log_level("debug"), do: :debug
  defp log_level("info"), do: :info
  defp log_level("warning"), do: :warning
  defp log_level(_), do: :error

  defp what_runs(%Config{command: nil, adapter: adapter}), do: "adapter #{inspect(adapter)}"
  defp what_runs(%Config{command: command}), do: "command #{inspect(command)}"

  # A refused handshake (e.g. another protocol version), found natively.
  defp startup_error(state, {category, message, details}) when is_atom(category) do
    error = Error.from_native({category, message, details})

    %{
      error
      | message: "pool #{inspect(state.config.name)} could not start its workers: " <> message,
        details: Map.put(error.details, :pool, state.config.name)
    }
  end

  defp startup_error(state, {:frame, {:ok, body}}) when is_map(body) do
    error = Error.from_python(body)

    %{
      error
      | category: :pool,
        message:
          "pool #{inspect(state.config.name)} could not start its workers: " <>
            "#{what_runs(state.config)} failed to load: #{error.message}",
        details: Map.put(error.details, :pool, state.config.name)
    }
  end

  defp startup_error(state, {:frame, body}) do
    Error.pool(
      "pool #{inspect(state.config.name)} could not start its workers: a worker sent a " <>
        "malformed error before its handshake (" <> malformed(body, "a map") <> ")",
      %{pool: state.config.name}
    )
  end

  defp early_exit_error(state, worker, details) do
    case worker.startup_error do
      %Error{} = error ->
        error

      nil ->
        output = worker.stderr_tail |> Enum.reverse() |> Enum.join("\n")

        reason = if is_binary(details[:reason]), do: ": " <> details[:reason], else: ""

        Error.pool(
          "pool #{inspect(state.config.name)} could not start: worker #{describe_exit(details)} " <>
            "before its handshake" <>
            reason <> if(output == "", do: "", else: ". Its stderr:\n" <> output),
          Map.put(details, :pool, state.config.name)
        )
    end
  end

  defp log_exit(state, id, worker, details) do
    if state.phase == :running do
      Logger.warning(
        "[snakepit] worker #{id} (os pid #{worker.os_pid}) of pool #{inspect(state.config.name)} " <>
          describe_exit(details) <> if(details[:reason], do: ": #{details[:reason]}", else: "")
      )
    end
  end

  defp describe_exit(%{signal: signal}) when is_integer(signal),
    do: "was killed by signal #{signal}"

  defp describe_exit(%{status: status}) when is_integer(status), do: "exited with status #{status}"
  defp describe_exit(_), do: "exited"

  defp give_up_if_failing(state, worker) do
    if state.failures[worker.slot] > state.config.max_start_failures do
      error =
        Error.pool(
          "pool #{inspect(state.config.name)} stopped: a worker failed to start " <>
            "#{state.config.max_start_failures} times in a row (:max_start_failures)" <>
            last_output(worker),
          %{pool: state.config.name}
        )

      Logger.error("[snakepit] " <> error.message)
      exit({:shutdown, error})
    else
      state
    end
  end

  defp last_output(%{startup_error: %Error{message: message}}), do: ". Last error: " <> message
  defp last_output(%{stderr_tail: []}), do: ""

  defp last_output(%{stderr_tail: tail}),
    do: ". Its stderr:\n" <> (tail |> Enum.reverse() |> Enum.join("\n"))

  # The first failure of a slot restarts it at once; a slot that keeps
  # failing waits 50 ms, then twice as long each time, up to @max_backoff.
  defp schedule_restart(state, slot) do
    failures = Map.update(state.failures, slot, 1, &(&1 + 1))

    case failures[slot] do
      1 ->
        send(self(), {:restart, slot})

      n ->
        Process.send_after(self(), {:restart, slot}, min(50 * Integer.pow(2, n - 2), @max_backoff))
    end

    %{state | failures: failures}
  end

  defp all_ready?(state) do
    map_size(state.workers) == state.config.size and
      Enum.all?(state.workers, fn {_, w} -> w.status == :ready end)
  end

  defp reply_if_ready(%{waiting: []} = state), do: state

  defp reply_if_ready(state) do
    if all_ready?(state) do
      Enum.each(state.waiting, &GenServer.reply(&1, :ok))
      %{state | waiting: []}
    else
      state
    end
  end

  # Processes worker events until every worker has exited or time is up.
  defp drain_exits(state, timeout) do
    state = %{state | phase: :stopping}
    deadline = System.monotonic_time(:millisecond) + timeout
    do_drain(state, deadline)
  end

  defp do_drain(state, deadline) do
    if map_size(state.workers) == 0 do
      state
    else
      wait = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {:snakepit_worker, _, _, _} = msg -> do_drain(handle_event(msg, state), deadline)
      after
        wait -> state
      end
    end
  end
end
