defmodule Snakepit.ConfigTest do
  # Pure functions only: nothing here touches the application env or starts
  # a pool (see run_as_script_test.exs for that, in a separate VM).
  use ExUnit.Case, async: true

  alias Snakepit.{Config, Error}

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
    {:env, [], [[], [{"A", "1"}]], [[{"A", 1}], [{"A", 1.5}], ["A=1"], "A=1", [{1, "a"}]]},
    {:cwd, nil, [nil, "/tmp"], [:tmp, ~c"/tmp", 1]},
    {:max_frame_bytes, 67_108_864, [1, 0xFFFF_FFFF], [0, 0xFFFF_FFFF + 1, 2 ** 40, :infinity]},
    {:startup_timeout, 30_000, [1, 60_000], [0, -1, :infinity, 1.0]},
    {:pipeline_depth, 1, [1, 64], [0, 65, :infinity, 2.0]},
    {:timeout, 30_000, [1, 5_000, :infinity], [0, -1, nil, "5000", 1.5]},
    {:queue_timeout, :infinity, [1, :infinity], [0, -5, nil]},
    {:max_queue, 10_000, [1, 100], [0, :infinity, nil]},
    {:cancel_grace, 2_000, [0, 100], [-5, :infinity, 1.5]},
    {:heartbeat_interval, 5_000, [1, :infinity], [0, nil]},
    {:heartbeat_misses, 3, [1, 10], [0, :infinity]},
    {:max_requests, :infinity, [1, :infinity], [0, :never]},
    {:max_age, :infinity, [1, :infinity], [0, -1]},
    {:max_memory_mb, :infinity, [1, :infinity], [0, "1G"]},
    {:startup_batch_size, 8, [1, 100], [0, :infinity]},
    {:max_start_failures, 5, [1, 100], [0, 1.5]},
    {:shutdown_timeout, 5_000, [0, 100], [-1, :infinity]}
  ]

  @native_keys [
    :max_frame_bytes,
    :pipeline_depth,
    :max_queue,
    :max_requests,
    :max_age,
    :max_memory_mb
  ]

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

          assert e.details == %{option: option}

          assert e.message =~
                   ~r/^invalid pool option #{inspect(option)}: expected .+, got: #{Regex.escape(inspect(value))}$/
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
            assert default_cell == "required"

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
            "### Pipelining"
          ] do
        assert doc =~ section
      end

      refute doc =~ "CallCancelled"
      assert doc =~ "snakepit_bridge.cancelled()"
      assert doc =~ "nothing interrupts Python code"
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
               pipeline_depth: 1,
               max_queue: 10_000,
               max_requests: 0,
               max_age: 0,
               max_memory_mb: 0
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
          queue_timeout: 5
        )

      assert Config.native_options(config) == %{
               max_frame_bytes: 1024,
               pipeline_depth: 4,
               max_queue: 7,
               max_requests: 100,
               max_age: 60_000,
               max_memory_mb: 512
             }
    end

    test "every value is a non-negative integer, for any accepted input" do
      for {option, _default, good, _bad} <- @options, option in @native_keys, value <- good do
        {:ok, config} = Config.validate([{option, value} | base_opts(option)])
        native = Config.native_options(config)
        assert Map.keys(native) |> Enum.sort() == Enum.sort(@native_keys)
        assert Enum.all?(Map.values(native), &(is_integer(&1) and &1 >= 0))
        assert native[option] == if(value == :infinity, do: 0, else: value)
      end
    end
  end

  # The required options, unless `option` is the one under test.
  defp base_opts(:adapter), do: []
  defp base_opts(_option), do: [adapter: "m.A"]
end
