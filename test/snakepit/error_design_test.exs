defmodule Snakepit.ErrorDesignTest do
  # The design documents' tests of Snakepit.Error, as written there: the
  # error type keeps the design's API.
  # Left out, as they are about gRPC, which Snakepit does not use (workers
  # speak MessagePack over pipes):
  #   - "has required fields": the assertion `error.grpc_status == nil`
  #     (there is no :grpc_status field);
  #   - "validates category field": the category :grpc_error (a broken
  #     conversation with a worker is :transport instead);
  #   - the whole `describe "grpc_error/3"` (no grpc_error/3).
  # Not as written there: the design's "Error struct" tests and its
  # "backward compatibility" test match `%Error{}` literals (and an
  # `{:error, atom}`) back, so they cannot fail. What they are about is
  # checked on what Snakepit builds and returns: the struct's and the
  # type's fields, the categories of the type and of the builders, and the
  # `{:error, %Snakepit.Error{}}` of real failed calls.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  alias Snakepit.{Error, TestPools}

  @fake Path.expand("../support/python/fake_worker.py", __DIR__)
  @fields [:category, :details, :message, :python_traceback]

  describe "Error struct" do
    test "has the design's fields, and the type declares exactly those" do
      keys = %Error{} |> Map.from_struct() |> Map.delete(:__exception__) |> Map.keys()
      assert Enum.sort(keys) == @fields
      assert type_fields() == @fields
    end

    test "the type's categories are those the builders make" do
      built = [
        Error.worker("m"),
        Error.timeout("m"),
        Error.python_error("ValueError", "m", nil),
        Error.validation("m"),
        Error.pool("m"),
        Error.transport("m")
      ]

      assert built |> Enum.map(& &1.category) |> Enum.sort() == Enum.sort(type_categories())
    end

    test "from the native core, only the categories it may send are taken; others are :transport" do
      assert %Error{category: :pool, message: "m", details: %{n: 1}} =
               Error.from_native({:pool, "m", %{n: 1}})

      for odd <- [:grpc_error, :timeout, :python_error, "worker"] do
        assert %Error{category: :transport, message: "unexpected reply from the native core: " <> _} =
                 Error.from_native({odd, "m", %{}})
      end
    end
  end

  describe "errors of real calls" do
    setup do
      %{pool: TestPools.start_pool(size: 1)}
    end

    test "are {:error, %Error{}} with the design's fields, in every category", %{pool: pool} do
      broken =
        TestPools.start_pool(size: 1, python: @fake, env: %{"FAKE_WORKER_MODE" => "deep_result"})

      # exit_now comes after the other calls on `pool`: it ends their worker.
      results = [
        python_error: Snakepit.execute("boom", %{}, pool: pool),
        validation: Snakepit.execute("no_such_tool", %{}, pool: pool),
        timeout: Snakepit.execute("until_cancelled", %{}, pool: pool, timeout: 50),
        worker: Snakepit.execute("exit_now", %{code: 7}, pool: pool),
        pool: Snakepit.execute("ping", %{}, pool: :no_such_pool),
        transport: Snakepit.execute("break", %{}, pool: broken)
      ]

      assert results |> Keyword.keys() |> Enum.sort() == Enum.sort(type_categories())

      for {category, result} <- results do
        assert {:error, %Error{category: ^category} = error} = result
        assert is_binary(error.message) and error.message != ""
        assert is_map(error.details)

        if category == :python_error,
          do: assert(error.python_traceback =~ "raise ValueError(message)"),
          else: assert(error.python_traceback == nil, inspect(error, structs: false))
      end

      assert {:error, %Error{details: %{status: 7}}} = results[:worker]
    end
  end

  describe "worker_error/2" do
    test "creates worker error with default details" do
      error = Error.worker_error("Worker crashed")

      assert error.category == :worker
      assert error.message == "Worker crashed"
      assert error.details == %{}
    end

    test "creates worker error with custom details" do
      error = Error.worker_error("Worker not found", %{worker_id: "w1", pool: :default})

      assert error.category == :worker
      assert error.message == "Worker not found"
      assert error.details == %{worker_id: "w1", pool: :default}
    end
  end

  describe "timeout_error/2" do
    test "creates timeout error" do
      error = Error.timeout_error("Request timed out", %{timeout_ms: 5000})

      assert error.category == :timeout
      assert error.message == "Request timed out"
      assert error.details.timeout_ms == 5000
    end
  end

  describe "python_error/4" do
    test "creates Python exception error with traceback" do
      traceback = """
      Traceback (most recent call last):
        File "script.py", line 10, in <module>
          do_something()
        File "script.py", line 5, in do_something
          raise ValueError("Invalid input")
      ValueError: Invalid input
      """

      error =
        Error.python_error("ValueError", "Invalid input", traceback, %{function: "do_something"})

      assert error.category == :python_error
      assert error.message == "ValueError: Invalid input"
      assert error.python_traceback == traceback
      assert error.details.exception_type == "ValueError"
      assert error.details.function == "do_something"
    end
  end

  describe "pool_error/2" do
    test "creates pool error" do
      error = Error.pool_error("Pool not found", %{pool_name: :test_pool})

      assert error.category == :pool
      assert error.message == "Pool not found"
      assert error.details.pool_name == :test_pool
    end
  end

  describe "validation_error/2" do
    test "creates validation error" do
      error =
        Error.validation_error("Invalid parameters", %{
          field: "user_id",
          expected: "integer",
          got: "string"
        })

      assert error.category == :validation
      assert error.message == "Invalid parameters"
      assert error.details.field == "user_id"
    end
  end

  describe "String.Chars implementation" do
    test "converts error to readable string" do
      error = Error.worker_error("Worker not found", %{worker_id: "w1"})
      string = to_string(error)

      assert string =~ "Worker not found"
      assert string =~ "worker_id"
      assert string =~ "w1"
    end

    test "includes traceback if present" do
      error = Error.python_error("ValueError", "Bad value", "Traceback line 1\nTraceback line 2")
      string = to_string(error)

      assert string =~ "ValueError: Bad value"
      assert string =~ "Traceback"
    end
  end

  defp type_fields do
    {:ok, types} = Code.Typespec.fetch_types(Error)
    [{:type, _, :map, fields}] = for {:type, {:t, type, []}} <- types, do: type

    keys =
      for {:type, _, :map_field_exact, [{:atom, _, key}, _]} <- fields,
          key not in [:__struct__, :__exception__],
          do: key

    Enum.sort(keys)
  end

  defp type_categories do
    {:ok, types} = Code.Typespec.fetch_types(Error)
    [{:type, _, :union, atoms}] = for {:type, {:category, type, []}} <- types, do: type
    for {:atom, _, category} <- atoms, do: category
  end
end
