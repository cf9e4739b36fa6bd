defmodule :telemetry do
  @moduledoc false
  # A bench-only stand-in for the :telemetry hex package (which cannot be
  # fetched here), for bench/telemetry.exs. Its execute/3 does what
  # telemetry 1.4's does (src/telemetry.erl, telemetry_handler_table.erl and
  # telemetry_ets.erl in beam-telemetry/telemetry, read at v1.4.1):
  #
  #   - the guard `[_ | _] = EventName`, is_map/1 on both maps;
  #   - `persistent_term:get(telemetry, Default)` for the
  #     {Module, ListForEventFun, TID} of the handler table;
  #   - a call of that external fun, which does `ets:lookup(TID, EventName)`
  #     on a protected duplicate_bag with read_concurrency, keyed on the
  #     handler record's event_name, in a try that turns badarg into [];
  #   - each handler called in a try (a failing one is detached).
  #
  # So with no handler attached an event costs a persistent_term read, a
  # fun call and one ETS lookup that finds nothing. What differs from the
  # package lies off that path: table writes go through a bare process
  # rather than a gen_server, a failing handler is only detached (no
  # [:telemetry, :handler, :failure] event, no log), and there is no span/3
  # or persist/0. Snakepit calls only execute/3.

  require Record
  Record.defrecordp(:handler, [:id, :event_name, :function, :config])

  @pt_key :telemetry

  # What the package's application does when it starts: a protected table
  # owned by a long-lived process (the package's gen_server), and its handle
  # in a persistent_term.
  def start do
    if :persistent_term.get(@pt_key, nil) == nil do
      parent = self()

      owner =
        spawn(fn ->
          # keypos 3: the record's event_name, as in the package.
          opts = [:duplicate_bag, :protected, keypos: 3, read_concurrency: true]
          send(parent, {:telemetry_table, :ets.new(:telemetry_handler_table, opts)})
          serve()
        end)

      receive do
        {:telemetry_table, tid} ->
          :persistent_term.put(@pt_key, {:telemetry_ets, &:telemetry.list_for_event/2, tid})
          :persistent_term.put({__MODULE__, :owner}, owner)
      end
    end

    :ok
  end

  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  def attach_many(id, events, fun, config) when is_function(fun, 4) do
    in_owner(fn tid ->
      if :ets.match(tid, handler(id: id, event_name: :_, function: :_, config: :_)) == [] do
        :ets.insert(
          tid,
          for(e <- events, do: handler(id: id, event_name: e, function: fun, config: config))
        )

        :ok
      else
        {:error, :already_exists}
      end
    end)
  end

  def detach(id) do
    in_owner(fn tid ->
      pattern = handler(id: id, event_name: :_, function: :_, config: :_)

      case :ets.select_delete(tid, [{pattern, [], [true]}]) do
        0 -> {:error, :not_found}
        _ -> :ok
      end
    end)
  end

  # Table writes go through its owner, as through the package's gen_server.
  defp in_owner(fun) do
    {_, _, tid} = :persistent_term.get(@pt_key)
    ref = make_ref()
    send(:persistent_term.get({__MODULE__, :owner}), {:run, fun, tid, self(), ref})

    receive do
      {^ref, reply} -> reply
    end
  end

  defp serve do
    receive do
      {:run, fun, tid, from, ref} -> send(from, {ref, fun.(tid)})
    end

    serve()
  end

  def execute([_ | _] = event, measurements, metadata)
      when is_map(measurements) and is_map(metadata) do
    {_mod, list_for_event, state} = :persistent_term.get(@pt_key, default_impl())
    do_execute(list_for_event.(state, event), event, measurements, metadata)
  end

  defp do_execute([], _event, _measurements, _metadata), do: :ok

  defp do_execute([handler(id: id, function: fun, config: config) | rest], event, m, md) do
    try do
      fun.(event, m, md, config)
    catch
      _kind, _reason -> spawn(fn -> detach(id) end)
    end

    do_execute(rest, event, m, md)
  end

  @doc false
  # telemetry_ets:list_for_event/2.
  def list_for_event(tid, event) do
    try do
      :ets.lookup(tid, event)
    catch
      :error, :badarg -> []
    end
  end

  # Before the table exists: no handlers.
  defp default_impl, do: {:telemetry_ets, fn _, _ -> [] end, %{}}
end
