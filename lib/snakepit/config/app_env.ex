defmodule Snakepit.Config.AppEnv do
  @moduledoc """
  The application environment of `:snakepit` (`config :snakepit, ...`)
  translated into the pools Snakepit's application starts: the `pools:`
  list, the design documents' flat keys (`adapter_module`, `pool_size`,
  `worker_timeout`) for a `:default` pool, `pooling_enabled` and
  `redact_keys`. "Application configuration" in `Snakepit.Config` documents
  the forms; this module checks them and refuses, with a `:validation`
  error that says what was meant, what it would otherwise have to ignore or
  guess at. The pool options themselves are `Snakepit.Config`'s table.
  """

  alias Snakepit.{Config, Error}

  @doc """
  Translates the application environment of `:snakepit` (what
  `Application.get_all_env(:snakepit)` returns) into the pools to start:
  `{name, options}` pairs, in order, each with its `:name` among the
  options. See "Application configuration" above for the accepted keys.

  Every pool's options are validated with `validate/1`. Anything that would
  otherwise be ignored or guessed at is an error with category
  `:validation`: an unknown key, a pool option at the top level, an Elixir
  module as `adapter_module`, two definitions of the `:default` pool.

      iex> Snakepit.Config.pools_from_env(adapter_module: "my_pkg.mod.Adapter", pool_size: 4)
      {:ok, [default: [name: :default, adapter: "my_pkg.mod.Adapter", size: 4]]}

      iex> Snakepit.Config.pools_from_env(pools: [ml: [adapter: "m.A"]], pooling_enabled: false)
      {:ok, []}

      iex> {:error, error} = Snakepit.Config.pools_from_env(adapter_module: "m.A", max_retries: 3)
      iex> error.details.unknown_keys
      [:max_retries]
  """
  @spec pools_from_env(keyword()) :: {:ok, [{atom(), keyword()}]} | {:error, Error.t()}
  def pools_from_env(env) when is_list(env) do
    if Keyword.keyword?(env) do
      with :ok <- check_app_keys(env),
           :ok <- check_redact_keys(env),
           {:ok, enabled?} <- fetch_pooling_enabled(env),
           {:ok, flat} <- flat_pool(env),
           {:ok, pools} <- listed_pools(Keyword.get(env, :pools, [])),
           :ok <- check_one_default(flat, pools) do
        {:ok, if(enabled?, do: flat ++ pools, else: [])}
      end
    else
      not_a_keyword_list("the :snakepit application environment", env)
    end
  end

  def pools_from_env(env), do: not_a_keyword_list("the :snakepit application environment", env)

  defp not_a_keyword_list(what, term) do
    {:error,
     Error.validation("#{what} must be a keyword list, got: #{Error.excerpt(Config.redact(term))}")}
  end

  # The design's flat keys and the pool option each one sets.
  @flat_keys [adapter_module: :adapter, pool_size: :size, worker_timeout: :timeout]
  @app_keys [:pools | Keyword.keys(@flat_keys)] ++ [:pooling_enabled, :redact_keys]
  @example_adapter "my_pkg.module.ClassName"

  # Keys of the design documents (and of the gRPC-based Snakepit) that this
  # implementation does not have, and why.
  @unsupported %{
    session_affinity_enabled:
      "sessions are always on: a call with a :session_id goes to its session's worker " <>
        "as the pool option :affinity (or the call's) says; calls without one go anywhere",
    session_cleanup_interval:
      "idle sessions are ended after the pool option :session_ttl, checked every second",
    max_retries:
      "retries are per pool or per call: the pool option :retry (or a call's :retry) takes " <>
        "max_attempts:, see Snakepit.Retry",
    retry_backoff_ms:
      "retries are per pool or per call: the pool option :retry (or a call's :retry) takes " <>
        "base_backoff: and max_backoff:, see Snakepit.Retry",
    telemetry_enabled:
      "Snakepit emits :telemetry events whenever :telemetry is loaded (see Snakepit.Telemetry); " <>
        "with no handler attached they cost next to nothing",
    stats_collection_interval:
      "counters are kept all the time and read on demand with Snakepit.get_stats/1; " <>
        "nothing is collected periodically",
    pool_config: "pools are configured with pools: [name: options]",
    grpc_port:
      "workers talk to the BEAM over pipes (MessagePack frames), not gRPC; there is no port",
    grpc_config:
      "workers talk to the BEAM over pipes (MessagePack frames), not gRPC; there is nothing " <>
        "to configure"
  }

  defp check_redact_keys(env) do
    case Keyword.fetch(env, :redact_keys) do
      :error ->
        :ok

      {:ok, keys} ->
        if Snakepit.Redact.valid_keys?(keys),
          do: :ok,
          else:
            {:error,
             Error.validation(
               "config :snakepit, redact_keys: must be a list of non-empty strings or atoms, " <>
                 "got: #{Error.excerpt(keys)}",
               %{key: :redact_keys}
             )}
    end
  end

  defp check_app_keys(env) do
    case Enum.reject(Keyword.keys(env), &(&1 in @app_keys)) do
      [] ->
        :ok

      unknown ->
        misplaced = Enum.filter(unknown, &(&1 in Config.known_options()))
        notes = Enum.flat_map(unknown, &unknown_key_note/1)

        example =
          if misplaced == [],
            do: [],
            else: [
              "For example: config :snakepit, pools: [default: " <>
                inspect(Config.redact(misplaced_example(env, misplaced))) <> "]"
            ]

        message =
          Enum.join(
            [
              "unknown #{if length(unknown) == 1, do: "key", else: "keys"} in config :snakepit: " <>
                Enum.map_join(unknown, ", ", &inspect/1)
              | notes
            ] ++
              example ++
              [
                "config :snakepit accepts: " <>
                  Enum.map_join(@app_keys, ", ", &inspect/1) <>
                  " (see Snakepit.Config)"
              ],
            "\n"
          )

        {:error, Error.validation(message, %{unknown_keys: unknown, known_keys: @app_keys})}
    end
  end

  defp unknown_key_note(key) do
    cond do
      key in Config.known_options() ->
        [
          "- #{inspect(key)} is a pool option, not a key of the application: it goes in " <>
            "a pool's entry under pools:"
        ]

      Map.has_key?(@unsupported, key) ->
        ["- #{inspect(key)} is not supported: " <> @unsupported[key]]

      (similar = similar_app_key(key)) != nil ->
        ["- #{inspect(key)}: did you mean #{inspect(similar)}?"]

      true ->
        []
    end
  end

  defp similar_app_key(key) do
    {distance, similar} =
      Enum.max(for k <- @app_keys, do: {String.jaro_distance("#{k}", "#{key}"), k})

    if distance >= 0.85, do: similar
  end

  # The pools: entry that does what the flat keys and misplaced pool options meant.
  defp misplaced_example(env, misplaced) do
    flat = flat_options(env)

    flat =
      if is_binary(flat[:adapter]), do: flat, else: Keyword.put(flat, :adapter, @example_adapter)

    flat ++ Keyword.take(env, misplaced)
  end

  defp flat_options(env) do
    for {app_key, pool_key} <- @flat_keys,
        Keyword.has_key?(env, app_key),
        do: {pool_key, env[app_key]}
  end

  defp fetch_pooling_enabled(env) do
    case Keyword.get(env, :pooling_enabled, true) do
      enabled? when is_boolean(enabled?) -> {:ok, enabled?}
      other -> {:error, invalid_app_key(:pooling_enabled, "true or false", other)}
    end
  end

  defp invalid_app_key(key, expected, value) do
    Error.validation(
      "invalid config :snakepit, #{key}: expected #{expected}, got: #{Error.excerpt(Config.redact(value))}",
      %{key: key}
    )
  end

  # The :default pool of the design's flat keys, if adapter_module is set.
  defp flat_pool(env) do
    case Keyword.fetch(env, :adapter_module) do
      {:ok, adapter} when is_atom(adapter) ->
        {:error, elixir_adapter(adapter, env)}

      {:ok, _} ->
        Enum.reduce_while(@flat_keys, {:ok, [name: :default]}, fn {app_key, pool_key}, {:ok, acc} ->
          case Keyword.fetch(env, app_key) do
            {:ok, value} ->
              case Config.check_option(pool_key, value) do
                {:ok, value} -> {:cont, {:ok, acc ++ [{pool_key, value}]}}
                {:error, expected} -> {:halt, {:error, invalid_app_key(app_key, expected, value)}}
              end

            :error ->
              {:cont, {:ok, acc}}
          end
        end)
        |> case do
          {:ok, opts} -> {:ok, [default: opts]}
          error -> error
        end

      :error ->
        case Enum.find([:pool_size, :worker_timeout], &Keyword.has_key?(env, &1)) do
          nil ->
            {:ok, []}

          key ->
            {:error,
             Error.validation(
               "config :snakepit, #{key}: sets the #{inspect(@flat_keys[key])} of the pool " <>
                 "of adapter_module:, which is not set. Set adapter_module:, or give the " <>
                 "pool's #{inspect(@flat_keys[key])} in its entry under pools:",
               %{key: key}
             )}
        end
    end
  end

  defp elixir_adapter(adapter, env) do
    what = if elixir_module?(adapter), do: "an Elixir module", else: "an atom"
    example = Keyword.put(flat_options(env), :adapter, @example_adapter)

    Error.validation(
      "invalid config :snakepit, adapter_module: #{inspect(adapter)} is #{what}, but " <>
        "Snakepit's adapters are Python classes (subclasses of snakepit_bridge.BaseAdapter), " <>
        "named by their dotted path. For example:\n" <>
        "config :snakepit, pools: [default: #{inspect(example)}]",
      %{key: :adapter_module}
    )
  end

  defp elixir_module?(atom), do: String.starts_with?(Atom.to_string(atom), "Elixir.")

  # The pools of `pools:`, each validated.
  defp listed_pools(pools) do
    cond do
      not (is_list(pools) and Enum.all?(pools, &match?({n, o} when is_atom(n) and is_list(o), &1))) ->
        {:error,
         invalid_app_key(
           :pools,
           ~s(a keyword list of pool names and their options, like ) <>
             ~s([default: [adapter: "#{@example_adapter}"]]),
           pools
         )}

      (dups = Keyword.keys(pools) -- Enum.uniq(Keyword.keys(pools))) != [] ->
        name = hd(dups)

        {:error,
         Error.validation("config :snakepit, pools: names the pool #{inspect(name)} twice", %{
           key: :pools,
           pool: name
         })}

      true ->
        Enum.reduce_while(pools, {:ok, []}, fn {name, opts}, {:ok, acc} ->
          case listed_pool(name, opts) do
            {:ok, opts} -> {:cont, {:ok, acc ++ [{name, opts}]}}
            {:error, error} -> {:halt, {:error, error}}
          end
        end)
    end
  end

  defp listed_pool(name, opts) do
    with :ok <- check_name_option(name, opts),
         opts = Keyword.put(opts, :name, name),
         {:ok, _config} <- Config.validate(opts) do
      {:ok, opts}
    else
      {:error, %Error{} = error} ->
        {:error,
         %{
           error
           | message: "config :snakepit, pools: pool #{inspect(name)}: " <> error.message,
             details: Map.merge(error.details, %{key: :pools, pool: name})
         }}
    end
  end

  defp check_name_option(name, opts) do
    case Keyword.fetch(opts, :name) do
      {:ok, other} when other != name ->
        {:error,
         Error.validation(
           "its options say name: #{inspect(other)}, but the pool is named by its key " <>
             "under pools:; leave :name out",
           %{option: :name}
         )}

      _ ->
        :ok
    end
  end

  defp check_one_default([default: _], pools) do
    if Keyword.has_key?(pools, :default) do
      {:error,
       Error.validation(
         "config :snakepit defines the :default pool twice: with adapter_module: and in " <>
           "pools:. Keep one of them",
         %{key: :adapter_module, pool: :default}
       )}
    else
      :ok
    end
  end

  defp check_one_default(_flat, _pools), do: :ok
end
