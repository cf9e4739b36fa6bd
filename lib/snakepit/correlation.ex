defmodule Snakepit.Correlation do
  @moduledoc """
  Correlation ids: the string that follows one call from Elixir into Python
  and back, so that its error, its telemetry events, and what the tool logs
  or prints can be found together.

  Give one with the `:correlation_id` option of a call (e.g. a request id
  from Phoenix's `Logger.metadata()[:request_id]`); without it Snakepit
  makes one with `new/0`. The worker sees it as `ctx.correlation_id`, and
  sets it on every Python log record made while the call runs
  (`record.correlation_id`, so a Python logging formatter can print it);
  the records and the call's `print()` output reach `Logger` with
  `correlation_id` in their metadata.
  """

  @max_bytes 128

  @doc """
  A new id, unique in this VM and unlikely to repeat across VMs: a random
  prefix drawn once per VM, then a counter, in base 36. Costs a few hundred
  nanoseconds (`bench/telemetry.exs`), small next to a call.

      iex> a = Snakepit.Correlation.new()
      iex> a == Snakepit.Correlation.new()
      false
      iex> String.length(a) > 8
      true
  """
  @spec new() :: String.t()
  def new do
    prefix() <> Integer.to_string(:erlang.unique_integer([:positive]), 36)
  end

  defp prefix do
    case :persistent_term.get({__MODULE__, :prefix}, nil) do
      nil ->
        prefix = Base.encode32(:crypto.strong_rand_bytes(5), case: :lower, padding: false) <> "-"
        :persistent_term.put({__MODULE__, :prefix}, prefix)
        prefix

      prefix ->
        prefix
    end
  end

  @doc """
  The call's correlation id: the `:correlation_id` option if it is a string
  of 1 to #{@max_bytes} bytes, a new one if the option is absent or `nil`.
  """
  @spec from_opts(keyword()) :: {:ok, String.t()} | {:error, Snakepit.Error.t()}
  def from_opts(opts) do
    case Keyword.get(opts, :correlation_id) do
      nil ->
        {:ok, new()}

      id when is_binary(id) and byte_size(id) in 1..@max_bytes ->
        {:ok, id}

      other ->
        {:error,
         Snakepit.Error.validation(
           "the :correlation_id must be a string of 1 to #{@max_bytes} bytes, got: " <>
             Snakepit.Error.excerpt(other),
           %{option: :correlation_id}
         )}
    end
  end

  @doc """
  `error` with `correlation_id` in its details (unless it has one already).

      iex> e = Snakepit.Correlation.tag(Snakepit.Error.timeout("late"), "req-1")
      iex> e.details.correlation_id
      "req-1"
  """
  @spec tag(Snakepit.Error.t(), String.t()) :: Snakepit.Error.t()
  def tag(%Snakepit.Error{details: details} = error, correlation_id),
    do: %{error | details: Map.put_new(details, :correlation_id, correlation_id)}
end
