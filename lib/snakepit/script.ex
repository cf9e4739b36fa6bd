defmodule Snakepit.Script do
  @moduledoc """
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

  alias Snakepit.{Error, Pool}

  @doc """
  `Snakepit.run_as_script/2`: runs `fun` with the configured pools ready.
  """
  @spec run((() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  def run(fun, opts \\ []) when is_function(fun, 0) do
    timeout = Keyword.get(opts, :timeout, 30_000)
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
    Snakepit.await_ready(name, timeout)
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
end
