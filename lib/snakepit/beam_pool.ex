defmodule Snakepit.BeamPool do
  @moduledoc """
  A pool whose workers are BEAM processes running an Elixir module that
  implements `Snakepit.Adapter` (the pool's `:adapter` is a module, not a
  Python class). `Snakepit.Pool.start_link/1` starts one of these for such a
  pool; callers reach it through the same `Snakepit` functions.

  **Design.** As in a Python pool, no pool process sits on a call's path.
  A caller picks a worker itself (its session's worker, else the next one
  round robin, from an `:atomics` counter), records the call in the pool's
  ETS table (`{{:req, id}, worker, caller, tag, started?, runner}`), and
  sends it to the worker. A worker runs its calls one at a time, in order,
  each in a process of its own (so a timeout can stop it), and answers the
  caller with the same messages a Python pool's native core sends, values
  passed through the codec (`Snakepit.Native.codec_roundtrip/1`) as they
  would be to and from Python. Whoever takes a call's ETS entry
  (`:ets.take/2`) answers it, exactly once: the worker when the call ends,
  the caller when it gives up (`cancel/2`, `dequeue/2`), or this module's
  process when a worker dies (every call it held gets a `:worker` error,
  and the sessions bound to it are lost, as in a Python pool).

  **What a Python pool has that this has not:** OS processes, so no
  recycling, heartbeats, `:cancel_grace`, shared memory, reclaim or
  pipelining; `get_stats/1` counts outcomes, workers and sessions, and
  reports 0 for the rest. Session affinity is always `:strict`.
  """

  use GenServer

  alias Snakepit.{Config, Error, Native}

  @typedoc "A running pool's handle (what `Snakepit.Pool.fetch/1` gives as `:handle`)."
  @type handle :: {:beam, :ets.tid()}

  # Counters, by index.
  @counters [
    :requests,
    :completed,
    :python_errors,
    :validation_errors,
    :worker_errors,
    :timeouts,
    :queue_timeouts,
    :cancelled,
    :restarts,
    :chunks,
    :sessions_lost
  ]
  @index @counters |> Enum.with_index(1) |> Map.new()

  ## Starting

  @doc false
  @spec start_link(Config.t()) :: GenServer.on_start()
  def start_link(%Config{} = config) do
    GenServer.start_link(__MODULE__, config,
      name: {:via, Registry, {Snakepit.Registry, config.name}}
    )
  end

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)
    table = :ets.new(__MODULE__, [:public, :set, read_concurrency: true, write_concurrency: true])
    :ets.insert(table, {:counters, :counters.new(length(@counters), [:write_concurrency])})
    :ets.insert(table, {:ids, :atomics.new(2, [])})
    handle = {:beam, table}
    workers = for id <- 1..config.size, do: start_worker(config, handle, id)
    :ets.insert(table, {:workers, List.to_tuple(workers)})

    :persistent_term.put({Snakepit.Pool, config.name}, %{
      handle: handle,
      elixir_tools: nil,
      queue_timeout: config.queue_timeout,
      timeout: config.timeout,
      affinity: :strict,
      stream_window: config.stream_window,
      retry: config.retry
    })

    {:ok, %{config: config, handle: handle, next_id: config.size + 1}}
  end

  @impl true
  def handle_call(:await_ready, _from, state), do: {:reply, :ok, state}

  @impl true
  def handle_info({:EXIT, pid, reason}, %{handle: {:beam, table} = handle} = state) do
    [{:workers, workers}] = :ets.lookup(table, :workers)

    case Enum.find_index(Tuple.to_list(workers), &(&1 == pid)) do
      nil ->
        {:noreply, state}

      index ->
        _ = fail_calls(table, pid, reason)
        _ = lose_sessions(table, index + 1)
        count(handle, :restarts)
        new = start_worker(state.config, handle, index + 1)
        :ets.insert(table, {:workers, put_elem(workers, index, new)})
        {:noreply, state}
    end
  end

  @impl true
  def terminate(_reason, %{config: config, handle: {:beam, table}}) do
    :persistent_term.erase({Snakepit.Pool, config.name})

    _ =
      case :ets.lookup(table, :workers) do
        [{:workers, workers}] ->
          for w <- Tuple.to_list(workers) do
            send(w, :stop)
            ref = Process.monitor(w)

            receive do
              {:DOWN, ^ref, _, _, _} -> :ok
            after
              5_000 -> Process.exit(w, :kill)
            end
          end

        [] ->
          :ok
      end

    # Calls still recorded get a :pool error, as a stopped Python pool gives.
    for {{:req, _}, _, caller, tag, _, _} = entry <-
          :ets.match_object(table, {{:req, :_}, :_, :_, :_, :_, :_}),
        :ets.take(table, elem(entry, 0)) != [] do
      send(caller, {tag, :python_error, {:error, Error.pool("the pool stopped")}, 0, nil})
    end

    :ok
  end

  defp start_worker(config, handle, id) do
    adapter = config.adapter
    spawn_link(fn -> worker_init(adapter, handle, id, config) end)
  end

  defp fail_calls(table, pid, reason) do
    for {key, _, caller, tag, _, _} <- :ets.match_object(table, {{:req, :_}, pid, :_, :_, :_, :_}),
        :ets.take(table, key) != [] do
      count({:beam, table}, :worker_errors)

      error =
        Error.worker("the worker running the Elixir adapter exited: #{Error.excerpt(reason)}", %{
          reason: reason
        })

      send(caller, {tag, :python_error, {:error, error}, 0, nil})
    end
  end

  defp lose_sessions(table, worker_id) do
    for {{:session, id}, ^worker_id} <- :ets.match_object(table, {{:session, :_}, worker_id}) do
      :ets.insert(table, {{:session, id}, :lost})
      count({:beam, table}, :sessions_lost)
    end
  end

  ## The caller's side (what Snakepit.Call and Snakepit.Stream use)

  @doc false
  @spec submit(handle(), reference(), String.t(), map(), term(), pos_integer() | nil, String.t()) ::
          {:ok, pos_integer()} | {:ok, pos_integer(), :new_session} | {:error, tuple()}
  def submit({:beam, table} = handle, tag, tool, args, session, window, correlation_id) do
    count(handle, :requests)

    with {:ok, worker_id, new?} <- pick(table, session) do
      [{:workers, workers}] = :ets.lookup(table, :workers)
      worker = elem(workers, worker_id - 1)
      [{:ids, ids}] = :ets.lookup(table, :ids)
      id = :atomics.add_get(ids, 1, 1)
      :ets.insert(table, {{:req, id}, worker, self(), tag, false, nil})
      session_id = with {sid, _affinity} <- session, do: sid
      send(worker, {:call, id, tool, args, session_id, window, correlation_id})
      if new?, do: {:ok, id, :new_session}, else: {:ok, id}
    end
  end

  defp pick(table, nil) do
    [{:workers, workers}] = :ets.lookup(table, :workers)
    [{:ids, ids}] = :ets.lookup(table, :ids)
    {:ok, rem(:atomics.add_get(ids, 2, 1), tuple_size(workers)) + 1, false}
  end

  defp pick(table, {session_id, _affinity}) do
    key = {:session, session_id}

    case :ets.lookup(table, key) do
      [{^key, :lost}] ->
        :ets.delete(table, key)
        count({:beam, table}, :worker_errors)

        {:error,
         {:worker, "session #{inspect(session_id)} was lost: its worker exited",
          %{session_id: session_id, session_lost: true, retryable: true}}}

      [{^key, worker_id}] ->
        {:ok, worker_id, false}

      [] ->
        {:ok, worker_id, _} = pick(table, nil)

        if :ets.insert_new(table, {key, worker_id}),
          do: {:ok, worker_id, true},
          else: pick(table, {session_id, :strict})
    end
  end

  @doc false
  @spec cancel(handle(), pos_integer()) :: :cancelled | :running | :replied
  def cancel(handle, request_id), do: give_up(handle, request_id, :timeouts)

  @doc false
  @spec stream_cancel(handle(), pos_integer()) :: :cancelled | :running | :replied
  def stream_cancel(handle, request_id), do: give_up(handle, request_id, :cancelled)

  # The caller takes its call's entry, so nothing is sent to it any more;
  # a call that started is stopped, and this returns once its process is
  # dead (so a chunk it sent is in the caller's mailbox by then, for
  # Snakepit.Stream to drop).
  defp give_up({:beam, table} = handle, request_id, counter) do
    case :ets.take(table, {:req, request_id}) do
      [{_, worker, _, _, started?, _}] ->
        count(handle, counter)

        if started? do
          stop_runner(worker, request_id)
          :running
        else
          :cancelled
        end

      [] ->
        :replied
    end
  end

  defp stop_runner(worker, request_id) do
    ref = Process.monitor(worker)
    send(worker, {:cancel, request_id, self(), ref})

    receive do
      {^ref, :stopped} -> Process.demonitor(ref, [:flush])
      {:DOWN, ^ref, _, _, _} -> :ok
    end
  end

  @doc false
  @spec dequeue(handle(), pos_integer()) :: :dequeued | :started
  def dequeue({:beam, table} = handle, request_id) do
    pattern = [{{{:req, request_id}, :_, :_, :_, false, :_}, [], [true]}]

    case :ets.select_delete(table, pattern) do
      1 ->
        count(handle, :queue_timeouts)
        :dequeued

      0 ->
        :started
    end
  end

  @doc false
  @spec stream_ack(handle(), pos_integer(), pos_integer()) :: :ok
  def stream_ack({:beam, table}, request_id, n) do
    case :ets.lookup(table, {:req, request_id}) do
      [{_, _, _, _, _, runner}] when is_pid(runner) -> send(runner, {:ack, n})
      _ -> :ok
    end

    :ok
  end

  @doc false
  @spec end_session(handle(), String.t()) :: boolean()
  def end_session({:beam, table}, session_id) do
    :ets.take(table, {:session, session_id}) != []
  end

  @doc false
  @spec pool_stats(handle()) :: map()
  def pool_stats({:beam, table} = handle) do
    [{:counters, counters}] = :ets.lookup(table, :counters)
    counted = Map.new(@counters, fn name -> {name, :counters.get(counters, @index[name])} end)
    [{:workers, workers}] = :ets.lookup(table, :workers)
    in_flight = length(:ets.match_object(table, {{:req, :_}, :_, :_, :_, true, :_}))
    queued = length(:ets.match_object(table, {{:req, :_}, :_, :_, :_, false, :_}))
    sessions = length(:ets.match_object(table, {{:session, :_}, :_}))
    busy = workers |> Tuple.to_list() |> Enum.count(&busy?(handle, &1))

    Map.merge(counted, %{
      workers: tuple_size(workers),
      idle: tuple_size(workers) - busy,
      busy: busy,
      starting: 0,
      stopping: 0,
      queued: queued,
      in_flight: in_flight,
      sessions: sessions,
      rejected: 0,
      stopped: 0,
      transport_errors: 0,
      requeued: 0,
      recycles: 0,
      sessions_expired: 0,
      dropped_output_lines: 0,
      shm_bytes: 0,
      circuit: nil,
      latency: %{
        queue: %{p50: nil, p95: nil, p99: nil},
        run: %{p50: nil, p95: nil, p99: nil},
        samples: 0
      }
    })
  end

  @doc false
  @spec pool_workers(handle()) :: [map()]
  def pool_workers({:beam, table} = handle) do
    [{:workers, workers}] = :ets.lookup(table, :workers)

    for {pid, i} <- workers |> Tuple.to_list() |> Enum.with_index(1) do
      running = if busy?(handle, pid), do: 1, else: 0
      in_flight = length(:ets.match_object(table, {{:req, :_}, pid, :_, :_, :_, :_}))

      %{
        worker_id: i,
        os_pid: nil,
        pid: pid,
        state: if(running == 1, do: :busy, else: :idle),
        running: running,
        in_flight: in_flight,
        requests: nil,
        age_ms: nil,
        rss_bytes: nil,
        sessions: length(:ets.match_object(table, {{:session, :_}, i}))
      }
    end
  end

  @doc false
  @spec pool_sessions(handle()) :: [map()]
  def pool_sessions({:beam, table}) do
    table
    |> :ets.match_object({{:session, :_}, :_})
    |> Enum.map(fn {{:session, id}, worker} -> session_row(id, worker) end)
    |> Enum.sort_by(& &1.session_id)
  end

  @doc false
  @spec pool_session(handle(), String.t()) :: map() | nil
  def pool_session({:beam, table}, session_id) do
    case :ets.lookup(table, {:session, session_id}) do
      [{_, worker}] -> session_row(session_id, worker)
      [] -> nil
    end
  end

  defp session_row(id, worker) do
    lost = worker == :lost

    %{
      session_id: id,
      worker_id: if(lost, do: nil, else: worker),
      os_pid: nil,
      age_ms: nil,
      idle_ms: nil,
      calls: nil,
      pending: nil,
      lost: lost
    }
  end

  defp busy?({:beam, table}, pid) do
    :ets.match_object(table, {{:req, :_}, pid, :_, :_, true, :_}) != []
  end

  defp count({:beam, table}, name) do
    [{:counters, counters}] = :ets.lookup(table, :counters)
    :counters.add(counters, @index[name], 1)
  end

  ## A worker

  defp worker_init(adapter, handle, id, config) do
    Process.flag(:trap_exit, true)

    state =
      if function_exported?(adapter, :init, 1) do
        case adapter.init(size: config.size, pool: config.name, worker_id: id) do
          {:ok, state} -> state
          {:error, reason} -> exit({:init_failed, reason})
        end
      else
        nil
      end

    worker_loop(%{adapter: adapter, handle: handle, id: id, state: state})
  end

  defp worker_loop(w) do
    receive do
      {:call, id, tool, args, session_id, window, correlation_id} ->
        run_call(w, id, tool, args, session_id, window, correlation_id)
        worker_loop(w)

      {:cancel, _id, from, ref} ->
        send(from, {ref, :stopped})
        worker_loop(w)

      :stop ->
        if function_exported?(w.adapter, :terminate, 2), do: w.adapter.terminate(:shutdown, w.state)
        :ok

      {:EXIT, _pid, reason} when reason != :normal ->
        # The pool's process went away: stop with it.
        if function_exported?(w.adapter, :terminate, 2), do: w.adapter.terminate(reason, w.state)
        exit(reason)

      _other ->
        worker_loop(w)
    end
  end

  defp run_call(w, id, tool, args, session_id, window, correlation_id) do
    {:beam, table} = w.handle
    key = {:req, id}

    # Started, unless its caller gave up (the entry is gone) first.
    if :ets.update_element(table, key, {5, true}) do
      started = System.monotonic_time()
      me = self()

      opts = [
        state: w.state,
        session_id: session_id,
        worker_id: w.id,
        correlation_id: correlation_id
      ]

      {runner, ref} =
        spawn_monitor(fn ->
          outcome =
            case crossed(args, "the args") do
              {:ok, args} -> run(w.adapter, tool, args, window, opts, table, key)
              {:error, error} -> {:error, Error.validation(error)}
            end

          send(me, {:done, id, outcome})
        end)

      :ets.update_element(table, key, {6, runner})
      await_runner(w, id, runner, ref, started)
    end
  end

  defp await_runner(w, id, runner, ref, started) do
    receive do
      {:done, ^id, outcome} ->
        Process.demonitor(ref, [:flush])
        answer(w, id, outcome, started)

      {:cancel, ^id, from, cancel_ref} ->
        Process.exit(runner, :kill)

        receive do
          {:DOWN, ^ref, _, _, _} -> :ok
        end

        flush_done(id)
        send(from, {cancel_ref, :stopped})

      {:DOWN, ^ref, _, _, reason} ->
        answer(w, id, {:raised, :exit, reason, []}, started)
    end
  end

  defp flush_done(id) do
    receive do
      {:done, ^id, _} -> :ok
    after
      0 -> :ok
    end
  end

  defp answer(w, id, outcome, started) do
    {:beam, table} = w.handle

    case :ets.take(table, {:req, id}) do
      [{_, _, caller, tag, _, _}] ->
        ran = System.convert_time_unit(System.monotonic_time() - started, :native, :nanosecond)
        meta = {nil, 0, ran}
        {status, payload, counter} = reply(outcome)
        count(w.handle, counter)
        send(caller, {tag, status, payload, 0, meta})

      [] ->
        :ok
    end
  end

  defp reply({:ok, value}), do: {:result, {:value, value}, :completed}
  defp reply(:done), do: {:done, {:value, nil}, :completed}

  defp reply({:error, %Error{category: :validation} = e}),
    do: {:validation_error, {:error, e}, :validation_errors}

  defp reply({:error, %Error{} = e}), do: {:python_error, {:error, e}, :python_errors}

  defp reply({:error, reason}) do
    message = if is_binary(reason), do: reason, else: Error.excerpt(reason)
    error = Error.python_error("ElixirAdapterError", message, nil, %{reason: reason})
    {:python_error, {:error, error}, :python_errors}
  end

  defp reply({:raised, kind, reason, stacktrace}) do
    {type, message} =
      case kind do
        :error ->
          e = Exception.normalize(:error, reason, stacktrace)
          {inspect(e.__struct__), Exception.message(e)}

        _ ->
          {Atom.to_string(kind), Error.excerpt(reason)}
      end

    traceback = Exception.format_stacktrace(stacktrace)

    {:python_error, {:error, Error.python_error(type, message, traceback, %{kind: kind})},
     :python_errors}
  end

  # In the runner: the adapter's answer, as the worker replies it.
  defp run(adapter, tool, args, nil, opts, _table, _key) do
    case adapter.execute(tool, args, opts) do
      {:ok, value} -> with {:error, why} <- crossed(value, "the result"), do: {:error, why}
      {:error, _} = error -> error
      other -> {:error, "execute/3 returned #{inspect(other)}, not {:ok, _} or {:error, _}"}
    end
  catch
    kind, reason -> {:raised, kind, reason, __STACKTRACE__}
  end

  defp run(adapter, tool, args, window, opts, table, key) do
    [{_, _, caller, tag, _, _}] = :ets.lookup(table, key)
    credits = :counters.new(1, [])
    :counters.put(credits, 1, window)

    emit = fn item ->
      take_credit(credits)
      # Its caller gave up: stop here (the worker has it killed too).
      unless :ets.member(table, key), do: exit(:shutdown)
      count({:beam, table}, :chunks)

      case crossed(item, "an item") do
        {:ok, item} -> send(caller, {tag, :chunk, {:value, item}, 0})
        {:error, why} -> throw({:unsendable, why})
      end

      :ok
    end

    result =
      if function_exported?(adapter, :execute_stream, 4),
        do: adapter.execute_stream(tool, args, emit, opts),
        else: with({:ok, value} <- adapter.execute(tool, args, opts), do: emit.(value))

    case result do
      :ok -> :done
      {:error, _} = error -> error
      other -> {:error, "execute_stream/4 returned #{inspect(other)}, not :ok or {:error, _}"}
    end
  catch
    :throw, {:unsendable, why} -> {:error, why}
    kind, reason -> {:raised, kind, reason, __STACKTRACE__}
  end

  # A value as it comes out of the codec, as it would reach Python and back.
  defp crossed(value, what) do
    case Native.codec_roundtrip(value) do
      {:ok, value} -> {:ok, value}
      {:error, why} -> {:error, "#{what} cannot be sent: #{why}"}
    end
  end

  defp take_credit(credits) do
    if :counters.get(credits, 1) > 0 do
      :counters.sub(credits, 1, 1)
    else
      receive do
        {:ack, n} ->
          :counters.add(credits, 1, n)
          take_credit(credits)
      end
    end
  end
end
