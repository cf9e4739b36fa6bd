defmodule :telemetry do
  @moduledoc false
  # A test-only stand-in for the :telemetry hex package, which cannot be
  # fetched here: the same attach/execute API, handlers in an ETS table.
  # Snakepit.Telemetry finds it loaded, as it would find the real one.

  @table :snakepit_telemetry_stand_in

  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  def attach_many(id, events, fun, config) do
    table()

    if :ets.match(@table, {:_, {id, :_, :_}}) != [] do
      {:error, :already_exists}
    else
      for event <- events, do: :ets.insert(@table, {event, {id, fun, config}})
      :ok
    end
  end

  def detach(id) do
    table()
    :ets.match_delete(@table, {:_, {id, :_, :_}})
    :ok
  end

  def execute(event, measurements, metadata) do
    if :ets.whereis(@table) != :undefined do
      for {_, {_id, fun, config}} <- :ets.lookup(@table, event) do
        fun.(event, measurements, metadata, config)
      end
    end

    :ok
  end

  # Owned by a process that outlives every test.
  defp table do
    if :ets.whereis(@table) == :undefined do
      parent = self()

      spawn(fn ->
        try do
          :ets.new(@table, [:named_table, :public, :duplicate_bag, read_concurrency: true])
        rescue
          ArgumentError -> :ok
        end

        send(parent, :table_ready)
        Process.sleep(:infinity)
      end)

      receive do
        :table_ready -> :ok
      end
    end

    @table
  end
end
