defmodule Snakepit.ConfigTest do
  # Pure functions only: nothing here touches the application env or starts
  # a pool (see run_as_script_test.exs for that, in a separate VM).
  use ExUnit.Case, async: true

  alias Snakepit.{Config, Error}

  # The longest wait the VM accepts in `receive ... after` (ms).
  @max_ms 4_294_967_295

  # Every option, written out here independently of Config's own table:
  # {option, default, accepted values, refused values}. A default of
  # :required or {:computed, fun} is not a literal.
  @options [
    {:name, :default, [:ml, :default], [nil, true, false, "ml", 1]},
    {:adapter, :required, ["m.A", "my_pkg.mod.Class_2", "_a._b"],
     ["A", "m.", ".A", "m..A", "m.A-B", "1m.A", :"m.A", nil, MyApp.Adapter]},
    {:size, {:computed, &System.schedulers_online/0}, [1, 64], [0, -1, 1.5, :infinity, "2"]},
    {:python, "python3", ["python3", "/usr/bin/python3"], ["", nil, :python3]},
    {:python_path, [], [[], ["/a", "b"]], ["/a", [:a], [~c"/a"], nil]},
    {:command, nil, [["node", "worker.js"], ["/srv/bin/worker"], ["w", "-v", "--x=1"]],
     ["node", [], [""], ["node", ""], ["node", :x], ["a\0b"], [~c"node"], ["node" | "x"], [nil]]},
    {:env, [], [[], [{"A", "1"}]], [[{"A", 1}], [{"A", 1.5}], ["A=1"], "A=1", [{1, "a"}]]},
    {:cwd, nil, [nil, "/tmp"], [:tmp, ~c"/tmp", 1]},
    {:max_frame_bytes, 67_108_864, [1, 0x7FFF_FFFF], [0, 0x7FFF_FFFF + 1, 2 ** 40, :infinity]},
    {:shm_threshold, 4_194_304, [1, 2 ** 40, :infinity], [0, -1, 1.5, nil]},
    {:shm_max_bytes, 4_294_967_296, [1, 2 ** 40], [0, -1, :infinity, 1.5]},
    {:startup_timeout, 30_000, [1, 60_000, @max_ms], [0, -1, :infinity, 1.0, @max_ms + 1]},
    {:concurrency, 1, [1, 32, 1024], [0, 1025, :infinity, 2.0]},
    {:pipeline_depth, 4, [1, 64], [0, 65, :infinity, 2.0]},
    {:reclaim_after, 50, [1, :infinity, @max_ms], [0, -1, nil, @max_ms + 1]},
    {:timeout, 30_000, [1, 5_000, :infinity, @max_ms], [0, -1, nil, "5000", 1.5, @max_ms + 1]},
    {:queue_timeout, :infinity, [1, :infinity, @max_ms], [0, -5, nil, @max_ms + 1]},
    {:max_queue, 10_000, [1, 100], [0, :infinity, nil]},
    {:cancel_grace, 2_000, [0, 100, @max_ms], [-5, :infinity, 1.5, @max_ms + 1]},
    {:heartbeat_interval, 5_000, [1, :infinity, @max_ms], [0, nil, @max_ms + 1]},
    {:heartbeat_misses, 3, [1, 10], [0, :infinity]},
    {:max_requests, :infinity, [1, :infinity], [0, :never]},
    {:max_age, :infinity, [1, :infinity, @max_ms], [0, -1, @max_ms + 1]},
    {:max_memory_mb, :infinity, [1, :infinity], [0, "1G"]},
    {:affinity, :strict, [:strict, :hint, :fail_fast], [nil, "strict", :sticky]},
    {:session_ttl, 1_800_000, [1, :infinity, @max_ms], [0, -1, @max_ms + 1]},
    {:max_sessions, 10_000, [1, :infinity], [0, -1, 1.5]},
    {:stream_window, 32, [1, 65_536], [0, 65_537, :infinity]},
    {:circuit_breaker, false,
     [
       false,
       [threshold: 3, window: 10_000, cooldown: 5_000],
       [threshold: 1, window: 5, cooldown: 9]
     ], [true, [threshold: 0], [cooldown: -1], [foo: 1], [threshold: :x]]},
    {:retry, false, [false, [], [max_attempts: 2]], [true, [timeout: 5], "x", [1]]},
    {:elixir_tools, %{}, [%{}, %{"f" => {M, :f}}],
     [%{"f" => :x}, %{"f" => {M, :f, []}}, %{"" => {M, :f}}, [:x], "f", nil]},
    {:elixir_tool_timeout, 5_000, [1, @max_ms], [0, -1, :infinity, @max_ms + 1]},
    {:startup_batch_size, 8, [1, 100], [0, :infinity]},
    {:max_start_failures, 5, [1, 100], [0, 1.5]},
    {:shutdown_timeout, 5_000, [0, 100, @max_ms], [-1, :infinity, @max_ms + 1]}
  ]

  @native_keys [
    :size,
    :max_frame_bytes,
    :shm_threshold,
    :shm_max_bytes,
    :concurrency,
    :pipeline_depth,
    :max_queue,
    :max_requests,
    :max_age,
    :max_memory_mb,
    :max_sessions,
    :session_ttl
  ]

  @circuit_keys [:circuit_threshold, :circuit_window, :circuit_cooldown]

  defp moduledoc do
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(Config)
    doc
  end

  # The cells of the row of `option` in the moduledoc's table.
  defp doc_row(option) do
    moduledoc()
    |> String.split("\n")
    |> Enum.find_value(fn line ->
      case String.split(line, "|") |> Enum.map(&String.trim/1) do
        ["", cell | cells] -> if cell == "`#{inspect(option)}`", do: Enum.drop(cells, -1)
        _ -> nil
      end
    end)
  end

  describe "validate/1" do
    test "this test covers every option Config knows, in its order" do
      assert Config.known_options() == Enum.map(@options, &elem(&1, 0))
    end

    test "each option takes the values it documents and refuses others, naming itself" do
      for {option, _default, good, bad} <- @options do
        for value <- good do
          assert {:ok, config} = Config.validate([{option, value} | base_opts(option)]),
                 "#{inspect(option)} refused #{inspect(value)}"

          assert Map.fetch!(config, option) == value
        end

        for value <- bad do
          assert {:error, %Error{category: :validation} = e} =
                   Config.validate([{option, value} | base_opts(option)]),
                 "#{inspect(option)} accepted #{inspect(value)}"

          if option == :env do
            # :env values are never quoted: see the :env tests below.
            assert e.details.option == :env
            assert e.message =~ ~r/^invalid pool option :env: ./
          else
            assert e.details == %{option: option}

            assert e.message =~
                     ~r/^invalid pool option #{inspect(option)}: expected .+, got: #{Regex.escape(inspect(value))}$/
          end
        end
      end
    end

    test "defaults, including the machine's for :size, computed at validation" do
      {:ok, config} = Config.validate(adapter: "m.A")

      for {option, default, _good, _bad} <- @options do
        expected =
          case default do
            :required -> "m.A"
            {:computed, fun} -> fun.()
            value -> value
          end

        assert Map.fetch!(config, option) == expected, "default of #{inspect(option)}"
      end
    end

    test "the existing error messages" do
      assert {:error, %Error{} = e} = Config.validate(adapter: "m.A", size: 0)
      assert e.message == "invalid pool option :size: expected a positive integer, got: 0"

      assert {:error, %Error{} = e} = Config.validate(name: :x)
      assert e.message == "missing required pool option :adapter"
      assert e.details == %{option: :adapter}

      assert {:error, %Error{} = e} = Config.validate(adapter: "m.A", sise: 2)
      assert e.details == %{option: :sise}

      assert e.message ==
               "unknown pool option :sise; known options: " <>
                 Enum.map_join(Config.known_options(), ", ", &inspect/1)

      for other <- [[1, 2], %{adapter: "m.A"}, "adapter", nil] do
        assert {:error, %Error{category: :validation, message: message}} = Config.validate(other)
        assert message == "pool options must be a keyword list, got: #{inspect(other)}"
      end
    end

    test "the env: maps, atoms and pairs become a list of string pairs" do
      assert {:ok, %{env: env}} = Config.validate(adapter: "m.A", env: %{"A" => "1", B: :two})
      assert Enum.sort(env) == [{"A", "1"}, {"B", "two"}]
      assert {:ok, %{env: [{"X", "y"}]}} = Config.validate(adapter: "m.A", env: [X: "y"])
      assert {:ok, %{env: []}} = Config.validate(adapter: "m.A", env: %{})

      assert {:error, %Error{details: %{option: :env}}} =
               Config.validate(adapter: "m.A", env: %{"A" => 1})
    end

    test "env names: empty, with = or NUL, and those the pool sets are refused, named" do
      for {name, words} <- [
            {"", "a name is empty"},
            {"A=B", ~s(the name "A=B" contains "=")},
            {"=A", ~s(the name "=A" contains "=")},
            {"A\0B", "contains a NUL byte"},
            {:"X=Y", ~s(the name "X=Y" contains "=")},
            {nil, "a name is empty"},
            {"SNAKEPIT_POOL", "SNAKEPIT_POOL is set by the pool itself"},
            {"SNAKEPIT_WORKER_ID", "SNAKEPIT_WORKER_ID is set by the pool itself"},
            {"SNAKEPIT_MAX_FRAME_BYTES", "SNAKEPIT_MAX_FRAME_BYTES is set by the pool itself"},
            {:SNAKEPIT_CONTROL_FD, "SNAKEPIT_CONTROL_FD is set by the pool itself"},
            {"SNAKEPIT_OWNER", "SNAKEPIT_OWNER is set by the pool itself"}
          ] do
        assert {:error, %Error{category: :validation} = e} =
                 Config.validate(adapter: "m.A", env: [{"OK", "1"}, {name, "the-value"}])

        assert e.message == "invalid pool option :env: " <> words or e.message =~ words,
               e.message

        assert e.details == %{option: :env, name: to_string(name)}
        refute e.message =~ "the-value"
      end

      # Names that merely look alike are fine.
      assert {:ok, _} =
               Config.validate(
                 adapter: "m.A",
                 env: [{"PYTHONPATH2", "x"}, {"SNAKEPIT_TEST_VAR", "y"}, {"snakepit_pool", "z"}]
               )
    end

    test "a value with a NUL byte is refused, naming its variable" do
      assert {:error, %Error{} = e} = Config.validate(adapter: "m.A", env: %{"TOKEN" => "abc\0def"})

      assert e.message == ~s(invalid pool option :env: the value of "TOKEN" contains a NUL byte)
      assert e.details == %{option: :env, name: "TOKEN"}

      # = in a value is fine: only the first = of NAME=value separates them.
      assert {:ok, %{env: [{"A", "b=c"}]}} = Config.validate(adapter: "m.A", env: [{"A", "b=c"}])
    end

    test "errors about :env never show its values" do
      secret = "s3cr3t"

      for env <- [
            [{"A", 1}, {"B", secret}],
            [{"TOKEN", secret}, "TOKEN=" <> secret],
            "TOKEN=" <> secret,
            [{"TOKEN", secret}, {1, secret}],
            %{"TOKEN" => secret, "BAD" => [secret]},
            [{"TOKEN", secret} | secret]
          ] do
        assert {:error, %Error{category: :validation} = e} =
                 Config.validate(adapter: "m.A", env: env)

        assert e.details.option == :env
        refute e.message =~ secret, e.message
      end

      # Nor do the errors that show whole options.
      for bad <- [
            %{adapter: "m.A", env: %{"TOKEN" => secret}},
            [{:adapter, "m.A"}, {:env, [{"TOKEN", secret}]}, :oops]
          ] do
        assert {:error, %Error{} = e} = Config.validate(bad)
        refute e.message =~ secret, e.message
        assert e.message =~ "**redacted**"
      end

      for env <- [
            [pools: %{ml: [adapter: "m.A", env: %{"TOKEN" => secret}]}],
            [adapter_module: "m.A", env: %{"TOKEN" => secret}],
            [{:pools, [ml: [adapter: "m.A", env: %{"TOKEN" => secret}]]}, :oops]
          ] do
        assert {:error, %Error{} = e} = Config.pools_from_env(env)
        refute e.message =~ secret, e.message
      end
    end
  end

  describe ":command" do
    test "a :command pool needs no :adapter: it has none" do
      assert {:ok, config} = Config.validate(command: ["node", "w.js"])
      assert config.command == ["node", "w.js"]
      assert config.adapter == nil

      # nil is the default: no command, so the adapter is required again.
      assert {:ok, %{command: nil, adapter: "m.A"}} = Config.validate(command: nil, adapter: "m.A")
      assert {:error, %Error{} = e} = Config.validate(command: nil)
      assert e.message == "missing required pool option :adapter"
    end

    test "it excludes the options of the Python bridge, naming those given" do
      for given <- [[:adapter], [:python], [:python_path], [:adapter, :python, :python_path]] do
        opts = Keyword.take([adapter: "m.A", python: "python3", python_path: ["/a"]], given)

        assert {:error, %Error{category: :validation} = e} =
                 Config.validate([command: ["node", "w.js"]] ++ opts)

        assert e.details == %{option: :command, excludes: given}

        assert e.message =~
                 "invalid pool options: :command excludes " <>
                   Enum.map_join(given, ", ", &inspect/1) <> " ("
      end

      # Even a bad :command: the pool was meant to run it, not the bridge.
      assert {:error, %Error{details: %{excludes: [:adapter]}}} =
               Config.validate(command: "node w.js", adapter: "m.A")
    end

    test "the moduledoc says :adapter is required unless :command is given" do
      assert ["required unless `:command` is given", _, _] = doc_row(:adapter)
      assert ["`nil` (the Python bridge)", accepts, _] = doc_row(:command)
      assert accepts =~ "non-empty list of non-empty strings"
    end
  end

  describe "find_command/2" do
    test "a name is found on the PATH; a path is taken relative to the cwd given" do
      assert {:ok, sh} = Config.find_command("sh", nil)
      assert Path.type(sh) == :absolute
      assert {:error, :not_on_path} = Config.find_command("no-such-program-#{__MODULE__}", nil)

      dir =
        Path.join(System.tmp_dir!(), "snakepit_find_command_#{System.unique_integer([:positive])}")

      File.mkdir_p!(Path.join(dir, "bin"))
      on_exit(fn -> File.rm_rf!(dir) end)
      worker = Path.join(dir, "bin/worker")
      File.write!(worker, "#!/bin/sh\n")

      assert {:error, :not_executable} = Config.find_command("bin/worker", dir)
      File.chmod!(worker, 0o755)
      assert {:ok, ^worker} = Config.find_command("bin/worker", dir)
      assert {:ok, ^worker} = Config.find_command("./bin/../bin/worker", dir)
      assert {:ok, ^worker} = Config.find_command(worker, "/")
      assert {:error, :not_found} = Config.find_command("bin/worker", "/")
      assert {:error, :not_executable} = Config.find_command("./bin", dir)
    end
  end

  describe "redact/1" do
    test "replaces the values of every :env, keeps its names and everything else" do
      {:ok, config} = Config.validate(adapter: "m.A", env: %{"TOKEN" => "s", "USER" => "u"})
      redacted = Config.redact(config)
      assert %Config{} = redacted
      assert Enum.sort(redacted.env) == [{"TOKEN", "**redacted**"}, {"USER", "**redacted**"}]
      assert %{redacted | env: config.env} == config

      state = %{config: config, workers: %{1 => %{os_pid: 5}}, log: [{:in, {:env, ["x"]}}]}
      assert Config.redact(state).config == redacted
      assert Config.redact(state).log == [{:in, {:env, ["**redacted**"]}}]
      assert Config.redact([1 | 2]) == [1 | 2]
      assert Config.redact(env: "TOKEN=s") == [env: "**redacted**"]
    end
  end

  describe "the table, the struct, the type and the docs agree" do
    test "the struct's and the type's keys are the known options" do
      known = Enum.sort(Config.known_options())
      assert Config.__struct__() |> Map.from_struct() |> Map.keys() |> Enum.sort() == known

      {:ok, types} = Code.Typespec.fetch_types(Config)
      [{:type, _, :map, fields}] = for {:type, {:t, type, []}} <- types, do: type

      keys =
        for {:type, _, :map_field_exact, [{:atom, _, key}, _]} <- fields,
            key != :__struct__,
            do: key

      assert Enum.sort(keys) == known
    end

    test "a struct cannot be built without the options that have no literal default" do
      assert_raise ArgumentError, ~r/:adapter.*:size|:size.*:adapter/, fn ->
        struct!(Config, name: :x)
      end
    end

    test "the moduledoc's table has every option with its default" do
      for {option, default, _good, _bad} <- @options do
        assert [default_cell, accepts, meaning] = doc_row(option), "no row for #{inspect(option)}"
        assert accepts != "" and meaning != ""

        case default do
          :required ->
            assert default_cell =~ ~r/^required/

          {:computed, _} ->
            assert default_cell =~ "`System.schedulers_online()`"

          value ->
            [shown] = Regex.run(~r/^`([^`]+)`/, default_cell, capture: :all_but_first)
            assert String.replace(shown, "_", "") == String.replace(inspect(value), "_", "")
        end
      end
    end

    test "the moduledoc keeps its prose, and says what cancellation really does" do
      doc = moduledoc()

      for section <- [
            "### Timeouts and cancellation",
            "### Health and recycling",
            "### Starting and stopping",
            "### Pipelining",
            "## Application configuration"
          ] do
        assert doc =~ section
      end

      assert doc =~ "snakepit_bridge.CallCancelled"
      assert doc =~ "snakepit_bridge.cancelled()"
      assert doc =~ "stuck in native code"
      assert doc =~ "never delivered"
    end

    test "each option's row has its four cells, no stray |" do
      for option <- Config.known_options() do
        assert [_default, _accepts, _meaning] = doc_row(option)
      end
    end
  end

  describe "native_options/1" do
    test "the native pool's keys, as integers, :infinity as 0" do
      {:ok, config} = Config.validate(adapter: "m.A")

      assert Config.native_options(config) == %{
               max_frame_bytes: 67_108_864,
               shm_threshold: 4_194_304,
               shm_max_bytes: 4_294_967_296,
               size: System.schedulers_online(),
               concurrency: 1,
               pipeline_depth: 4,
               max_queue: 10_000,
               max_requests: 0,
               max_age: 0,
               max_memory_mb: 0,
               max_sessions: 10_000,
               session_ttl: 1_800_000,
               circuit_threshold: 0,
               circuit_window: 0,
               circuit_cooldown: 0
             }

      {:ok, config} =
        Config.validate(
          adapter: "m.A",
          max_frame_bytes: 1024,
          pipeline_depth: 4,
          max_queue: 7,
          max_requests: 100,
          max_age: 60_000,
          max_memory_mb: 512,
          max_sessions: :infinity,
          session_ttl: :infinity,
          circuit_breaker: [threshold: 3],
          queue_timeout: 5,
          shm_threshold: :infinity,
          shm_max_bytes: 10
        )

      assert Config.native_options(config) == %{
               max_frame_bytes: 1024,
               shm_threshold: 0,
               shm_max_bytes: 10,
               size: System.schedulers_online(),
               concurrency: 1,
               pipeline_depth: 4,
               max_queue: 7,
               max_requests: 100,
               max_age: 60_000,
               max_memory_mb: 512,
               max_sessions: 0,
               session_ttl: 0,
               circuit_threshold: 3,
               circuit_window: 10_000,
               circuit_cooldown: 5_000
             }
    end

    test "every value is a non-negative integer, for any accepted input" do
      for {option, _default, good, _bad} <- @options, option in @native_keys, value <- good do
        {:ok, config} = Config.validate([{option, value} | base_opts(option)])
        native = Config.native_options(config)
        assert Map.keys(native) |> Enum.sort() == Enum.sort(@native_keys ++ @circuit_keys)
        assert Enum.all?(Map.values(native), &(is_integer(&1) and &1 >= 0))
        assert native[option] == if(value == :infinity, do: 0, else: value)
      end
    end
  end

  describe "pools_from_env/1" do
    test "pools: [name: opts] are validated and named, in order" do
      env = [pools: [a: [adapter: "m.A", size: 2], b: [adapter: "m.B", name: :b]]]

      assert Config.pools_from_env(env) ==
               {:ok, [a: [name: :a, adapter: "m.A", size: 2], b: [name: :b, adapter: "m.B"]]}

      assert Config.pools_from_env([]) == {:ok, []}
      assert Config.pools_from_env(pools: []) == {:ok, []}
    end

    test "the design's flat keys build the :default pool" do
      env = [adapter_module: "my_pkg.mod.Class", pool_size: 4, worker_timeout: 60_000]

      assert Config.pools_from_env(env) ==
               {:ok,
                [default: [name: :default, adapter: "my_pkg.mod.Class", size: 4, timeout: 60_000]]}

      assert {:ok, [default: [name: :default, adapter: "m.A", timeout: :infinity]]} =
               Config.pools_from_env(adapter_module: "m.A", worker_timeout: :infinity)

      assert {:ok, [default: _]} =
               Config.pools_from_env(adapter_module: "m.A", pooling_enabled: true)
    end

    test "the flat :default pool comes first and combines with other pools" do
      env = [pools: [ml: [adapter: "m.B"]], adapter_module: "m.A"]

      assert {:ok, [default: [name: :default, adapter: "m.A"], ml: [name: :ml, adapter: "m.B"]]} =
               Config.pools_from_env(env)
    end

    test "pooling_enabled: false starts no pool, but the config is still checked" do
      assert Config.pools_from_env(adapter_module: "m.A", pooling_enabled: false) == {:ok, []}

      assert Config.pools_from_env(pools: [ml: [adapter: "m.B"]], pooling_enabled: false) ==
               {:ok, []}

      assert {:error, %Error{details: %{pool: :ml, option: :size}}} =
               Config.pools_from_env(pools: [ml: [adapter: "m.B", size: 0]], pooling_enabled: false)

      assert {:error, %Error{} = e} = Config.pools_from_env(pooling_enabled: "no")

      assert e.message ==
               ~s(invalid config :snakepit, pooling_enabled: expected true or false, got: "no")

      assert e.details == %{key: :pooling_enabled}
    end

    test "flat values are checked like the pool options they set, named by their key" do
      assert {:error, %Error{category: :validation} = e} =
               Config.pools_from_env(adapter_module: "m.A", pool_size: 0)

      assert e.message == "invalid config :snakepit, pool_size: expected a positive integer, got: 0"
      assert e.details == %{key: :pool_size}

      assert {:error, %Error{details: %{key: :worker_timeout}} = e} =
               Config.pools_from_env(adapter_module: "m.A", worker_timeout: 0)

      assert e.message =~
               "expected a positive integer or :infinity (milliseconds, up to 4_294_967_295), got: 0"

      assert {:error, %Error{details: %{key: :adapter_module}} = e} =
               Config.pools_from_env(adapter_module: "not a path")

      assert e.message =~ ~s(expected a dotted Python path like "my_pkg.module.ClassName")
    end

    test "an Elixir module as adapter_module is refused, with the pools: entry to use" do
      assert {:error, %Error{category: :validation} = e} =
               Config.pools_from_env(adapter_module: MyApp.Adapter, pool_size: 4)

      assert e.details == %{key: :adapter_module}
      assert e.message =~ "adapter_module: MyApp.Adapter is an Elixir module"
      assert e.message =~ "Python classes"

      assert e.message =~
               ~s(config :snakepit, pools: [default: [adapter: "my_pkg.module.ClassName", size: 4]])

      assert {:error, %Error{} = e} = Config.pools_from_env(adapter_module: :my_adapter)
      assert e.message =~ "adapter_module: :my_adapter is an atom"
    end

    test "pool_size or worker_timeout without adapter_module is refused" do
      for key <- [:pool_size, :worker_timeout] do
        assert {:error, %Error{} = e} =
                 Config.pools_from_env([{key, 4}, pools: [default: [adapter: "m.A"]]])

        assert e.details == %{key: key}
        assert e.message =~ "adapter_module:, which is not set"
      end
    end

    test "the :default pool defined twice is refused" do
      env = [adapter_module: "m.A", pools: [default: [adapter: "m.B"]]]
      assert {:error, %Error{} = e} = Config.pools_from_env(env)
      assert e.message =~ "defines the :default pool twice"
      assert e.details == %{key: :adapter_module, pool: :default}
    end

    test "bad pools: entries name the pool" do
      assert {:error, %Error{} = e} = Config.pools_from_env(pools: [ml: [adapter: "m.A", size: 0]])

      assert e.message ==
               "config :snakepit, pools: pool :ml: invalid pool option :size: " <>
                 "expected a positive integer, got: 0"

      assert e.details == %{key: :pools, pool: :ml, option: :size}

      assert {:error, %Error{details: %{pool: :ml}} = e} = Config.pools_from_env(pools: [ml: []])
      assert e.message =~ "missing required pool option :adapter"

      assert {:error, %Error{details: %{pool: :ml, option: :name}}} =
               Config.pools_from_env(pools: [ml: [adapter: "m.A", name: :other]])

      assert {:error, %Error{details: %{pool: :ml}} = e} =
               Config.pools_from_env(pools: [ml: [adapter: "m.A"], ml: [adapter: "m.B"]])

      assert e.message =~ "names the pool :ml twice"

      for bad <- [%{ml: [adapter: "m.A"]}, [ml: %{adapter: "m.A"}], [{"ml", []}], "ml"] do
        assert {:error, %Error{details: %{key: :pools}} = e} = Config.pools_from_env(pools: bad)
        assert e.message =~ "invalid config :snakepit, pools: expected a keyword list"
      end
    end

    test "unknown keys are all listed, with the known keys, never dropped" do
      assert {:error, %Error{category: :validation} = e} =
               Config.pools_from_env(pools: [], colour: :blue, pool_sise: 3)

      assert e.details.unknown_keys == [:colour, :pool_sise]

      assert Enum.sort(e.details.known_keys) ==
               Enum.sort([
                 :pools,
                 :adapter_module,
                 :pool_size,
                 :worker_timeout,
                 :pooling_enabled,
                 :redact_keys
               ])

      assert e.message =~ "unknown keys in config :snakepit: :colour, :pool_sise"
      assert e.message =~ ":pool_sise: did you mean :pool_size?"

      assert e.message =~
               "config :snakepit accepts: :pools, :adapter_module, :pool_size, :worker_timeout, " <>
                 ":pooling_enabled"

      assert {:error, %Error{} = e} = Config.pools_from_env(colour: :blue)
      assert e.message =~ "unknown key in config :snakepit: :colour\n"
    end

    test "keys of the design that Snakepit does not support say so" do
      design_keys = [
        session_affinity_enabled: true,
        session_cleanup_interval: 300_000,
        max_retries: 3,
        retry_backoff_ms: 1000,
        telemetry_enabled: true,
        stats_collection_interval: 60_000
      ]

      assert {:error, %Error{} = e} =
               Config.pools_from_env([adapter_module: "m.A", pool_size: 4] ++ design_keys)

      assert e.details.unknown_keys == Keyword.keys(design_keys)

      for {key, _} <- design_keys do
        assert e.message =~ "- #{inspect(key)} is not supported: "
      end
    end

    test "pool options at the top level are refused, with the pools: entry they belong in" do
      env = [adapter_module: "m.A", pool_size: 2, python_path: ["/srv/py"], env: %{"A" => "1"}]
      assert {:error, %Error{} = e} = Config.pools_from_env(env)
      assert e.details.unknown_keys == [:python_path, :env]
      assert e.message =~ "- :python_path is a pool option, not a key of the application"

      # (the values of :env are not shown, even there)
      assert e.message =~
               ~s(For example: config :snakepit, pools: [default: [adapter: "m.A", size: 2, ) <>
                 ~s(python_path: ["/srv/py"], env: %{"A" => "**redacted**"}]])

      # without adapter_module the example names a placeholder class
      assert {:error, %Error{} = e} = Config.pools_from_env(size: 2)
      assert e.message =~ ~s(pools: [default: [adapter: "my_pkg.module.ClassName", size: 2]])
    end

    test "an env that is not a keyword list" do
      for bad <- [%{pools: []}, [1], nil] do
        assert {:error, %Error{category: :validation} = e} = Config.pools_from_env(bad)
        assert e.message =~ "must be a keyword list"
      end
    end
  end

  # The required options, unless `option` is the one under test.
  defp base_opts(:adapter), do: []
  defp base_opts(:command), do: []
  defp base_opts(_option), do: [adapter: "m.A"]
end
