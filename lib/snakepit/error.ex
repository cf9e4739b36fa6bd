defmodule Snakepit.Error do
  @moduledoc """
  The one error type of Snakepit: every failed call returns
  `{:error, %Snakepit.Error{}}`, and `Snakepit.execute!/3` raises it.

  Errors are data. Match on `:category` to decide what to do:

  | category        | meaning                                                        |
  |-----------------|----------------------------------------------------------------|
  | `:python_error` | the tool raised; `python_traceback` has the traceback          |
  | `:validation`   | the call was refused before running: unknown tool, arguments   |
  |                 | that do not fit the tool, or a value that cannot be sent       |
  | `:timeout`      | no answer within the call's `:timeout`                         |
  | `:worker`       | the worker process died during the call (`details` has its     |
  |                 | exit `:status` or `:signal`)                                   |
  | `:pool`         | the pool is unknown, stopped, or not started                   |
  | `:transport`    | the worker broke the wire protocol (garbage on stdout, a frame |
  |                 | over the size limit); it is replaced                           |

  Workers speak MessagePack frames over pipes (see `docs/protocol.md`), so a
  broken conversation with a worker is a `:transport` error; there is no
  RPC status code to report.

      iex> error = Snakepit.Error.python_error("ValueError", "bad input", "Traceback ...")
      iex> {error.category, error.message, error.details.exception_type}
      {:python_error, "ValueError: bad input", "ValueError"}
      iex> to_string(Snakepit.Error.timeout("no answer within 50 ms"))
      "[timeout] no answer within 50 ms"

  ## Details

  `details` is a map of facts about the failure (the `:tool`, the
  `:timeout`, a worker's exit `:status`...). Values of secret-named keys
  (`:password`, `"api_key"`, see `Snakepit.Redact`) are replaced by
  `"**redacted**"` when the functions of this module build an error.

  An error a tool raised on purpose with `snakepit_bridge.ToolError` is a
  `:python_error` whose details also hold the `ToolError`'s `:code` (when it
  has one), its `details` and `retryable: true` (when it said so). Its
  details are merged in with their keys as Python sent them (strings), so
  they never replace the keys Snakepit sets (atoms: `:kind`, `:tool`,
  `:exception_type`, `:code`, `:retryable`, `:attempts`).

      # raise ToolError("no such user", code="not_found", details={"user_id": 7})
      {:error, %Snakepit.Error{details: %{code: "not_found", "user_id" => 7}}}

  ## Retrying

  `retryable?/1` says whether running the call again is safe and may
  succeed: it is true exactly when `details.retryable` is `true`. Snakepit
  sets it on the errors of calls that never started (no worker took them:
  the queue was full or its `:queue_timeout` passed, the pool was stopping,
  the session was busy or lost before the call started, ...), and a Python
  tool sets it with `ToolError(..., retryable=True)`. An error of a call
  that ran (a timeout, a worker that died during it, an exception) is not
  retryable unless the tool said so: only the caller knows whether running
  it twice is harmless. `Snakepit.Retry` retries the retryable ones.

  ## As text

  `to_string/1` and `Exception.message/1` (what `raise` shows) give the
  category, the message, the details (redacted, inspected on one line) and
  the Python traceback:

      [python_error] ValueError: bad input
      Details: %{exception_type: "ValueError", kind: "exception", tool: "parse"}

      Python traceback:
      Traceback (most recent call last):
      ...

  `inspect/1` stays short, without the traceback:
  `#Snakepit.Error<:timeout, "no answer within 50 ms", details: %{timeout: 50}>`
  (`inspect(error, structs: false)` shows every field).
  """

  @typedoc "What kind of failure this is; see the table above."
  @type category :: :worker | :timeout | :python_error | :validation | :pool | :transport

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          details: map(),
          python_traceback: String.t() | nil
        }

  defexception category: :worker, message: "", details: %{}, python_traceback: nil

  alias Snakepit.Redact

  @doc """
  A Python exception: the message becomes `"Type: message"` and
  `details.exception_type` is set.

      iex> Snakepit.Error.python_error("KeyError", "'x'", nil, %{tool: "lookup"}).details
      %{exception_type: "KeyError", tool: "lookup"}
      iex> Snakepit.Error.python_error("ValueError", "Invalid input", "Traceback...")
      %Snakepit.Error{
        category: :python_error,
        message: "ValueError: Invalid input",
        python_traceback: "Traceback...",
        details: %{exception_type: "ValueError"}
      }
  """
  @spec python_error(String.t(), String.t(), String.t() | nil, map()) :: t()
  def python_error(type, message, traceback, details \\ %{}) do
    %__MODULE__{
      category: :python_error,
      message: "#{type}: #{message}",
      details: details |> Redact.redact() |> Map.put(:exception_type, type),
      python_traceback: traceback
    }
  end

  @doc """
  The worker failed: `worker/2`, under the design's name.

      iex> Snakepit.Error.worker_error("Worker crashed")
      %Snakepit.Error{category: :worker, message: "Worker crashed", details: %{}}
      iex> Snakepit.Error.worker_error("Worker not found", %{worker_id: "w1"})
      %Snakepit.Error{category: :worker, message: "Worker not found", details: %{worker_id: "w1"}}
  """
  @spec worker_error(String.t(), map()) :: t()
  def worker_error(message, details \\ %{}), do: worker(message, details)

  @doc """
  No answer in time: `timeout/2`, under the design's name.

      iex> Snakepit.Error.timeout_error("Request timed out", %{timeout_ms: 5000})
      %Snakepit.Error{category: :timeout, message: "Request timed out", details: %{timeout_ms: 5000}}
  """
  @spec timeout_error(String.t(), map()) :: t()
  def timeout_error(message, details \\ %{}), do: timeout(message, details)

  @doc """
  The pool cannot serve: `pool/2`, under the design's name.

      iex> Snakepit.Error.pool_error("Pool not found", %{pool_name: :test})
      %Snakepit.Error{category: :pool, message: "Pool not found", details: %{pool_name: :test}}
  """
  @spec pool_error(String.t(), map()) :: t()
  def pool_error(message, details \\ %{}), do: pool(message, details)

  @doc """
  The call was refused before it ran: `validation/2`, under the design's name.

      iex> Snakepit.Error.validation_error("Invalid field", %{field: "user_id"})
      %Snakepit.Error{category: :validation, message: "Invalid field", details: %{field: "user_id"}}
  """
  @spec validation_error(String.t(), map()) :: t()
  def validation_error(message, details \\ %{}), do: validation(message, details)

  @doc """
  True if the call may be run again: exactly when `details.retryable` is
  `true` (see "Retrying" above). Anything that is not an error is not
  retryable.

      iex> Snakepit.Error.retryable?(Snakepit.Error.pool("the queue is full", %{retryable: true}))
      true
      iex> Snakepit.Error.retryable?(Snakepit.Error.timeout("no answer within 50 ms"))
      false
  """
  @spec retryable?(t() | term()) :: boolean()
  def retryable?(%__MODULE__{details: %{retryable: true}}), do: true
  def retryable?(_other), do: false

  @doc """
  The call was refused before it ran.

      iex> Snakepit.Error.validation("unknown tool \\"nope\\"").category
      :validation
  """
  @spec validation(String.t(), map()) :: t()
  def validation(message, details \\ %{}), do: new(:validation, message, details)

  @doc "No answer in time."
  @spec timeout(String.t(), map()) :: t()
  def timeout(message, details \\ %{}), do: new(:timeout, message, details)

  @doc "The worker process failed."
  @spec worker(String.t(), map()) :: t()
  def worker(message, details \\ %{}), do: new(:worker, message, details)

  @doc "The pool is unknown, stopped or not able to serve."
  @spec pool(String.t(), map()) :: t()
  def pool(message, details \\ %{}), do: new(:pool, message, details)

  @doc "The worker broke the wire protocol."
  @spec transport(String.t(), map()) :: t()
  def transport(message, details \\ %{}), do: new(:transport, message, details)

  defp new(category, message, details) do
    %__MODULE__{category: category, message: message, details: Redact.redact(details)}
  end

  @doc """
  The error a failure found by the native core stands for: the payload of
  an `{tag, :error, payload}` answer, or of a NIF's `{:error, payload}`,
  `{category, message, details}`. Anything else is a `:transport` error.

      iex> Snakepit.Error.from_native({:pool, "the pool is stopping", %{}}).category
      :pool
  """
  @spec from_native(term()) :: t()
  def from_native({category, message, details})
      when category in [:worker, :transport, :pool, :validation] do
    new(category, message, details)
  end

  def from_native(other), do: transport("unexpected reply from the native core: #{inspect(other)}")

  @excerpt_chars 200

  @doc """
  `term` as it may appear in an error message: `inspect/2`-ed, cut short
  (about #{@excerpt_chars} characters of a string, 20 items of a
  collection), with the size of a long binary. For data that comes from a
  caller or a worker, which can be of any size.

      iex> Snakepit.Error.excerpt("add")
      ~s("add")
      iex> Snakepit.Error.excerpt(String.duplicate("x", 1_000_000)) |> String.ends_with?("<> ... (1000000 bytes)")
      true
      iex> Snakepit.Error.excerpt(Enum.to_list(1..1000)) |> String.length() < 100
      true
  """
  @spec excerpt(term()) :: String.t()
  def excerpt(term) do
    text = inspect(Redact.redact(term), limit: 20, printable_limit: @excerpt_chars)

    # Nested collections can still add up: keep the text itself short.
    text =
      if String.length(text) > 4 * @excerpt_chars,
        do: String.slice(text, 0, 4 * @excerpt_chars) <> "...",
        else: text

    if is_binary(term) and byte_size(term) > @excerpt_chars,
      do: text <> " (#{byte_size(term)} bytes)",
      else: text
  end

  @doc """
  The error a worker's `error` frame body stands for (see
  `docs/protocol.md`). The body is untrusted data, of any shape, and the
  result is always an error: a body that is not a map is the worker
  breaking the protocol (`:transport`); a message or type that is not a
  string is shown with `excerpt/1`, and a kind, tool or traceback that is
  not one is dropped. A `ToolError`'s fields: a `"details"` map is merged
  into the details (its keys as sent, so never over Snakepit's atom keys);
  a `"code"` that is a string or an integer is `details.code` (anything
  else, its excerpt); `"retryable": true` is `details.retryable`.

  `category` is the one the native core gave the answer; without it, the
  same rule decides (`:validation` for a call the worker refused before its
  tool ran, by its `"kind"`, `:python_error` otherwise).

      iex> e = Snakepit.Error.from_python(%{"kind" => "exception", "type" => "KeyError", "message" => "'a'"})
      iex> {e.category, e.details.exception_type}
      {:python_error, "KeyError"}
      iex> Snakepit.Error.from_python(%{"kind" => "unknown_tool", "message" => "no"}).category
      :validation
  """
  @spec from_python(term(), :validation | :python_error | nil) :: t()
  def from_python(body, category \\ nil)

  def from_python(body, category) when is_map(body) do
    kind = string_field(body, "kind")

    details =
      body
      |> tool_error_fields()
      |> Map.merge(%{kind: kind, tool: string_field(body, "tool")})

    traceback = string_field(body, "traceback")
    message = shown_field(body, "message") || "unknown error"

    case category || Snakepit.Native.error_category(kind) do
      :validation ->
        %__MODULE__{new(:validation, message, details) | python_traceback: traceback}

      :python_error ->
        python_error(shown_field(body, "type") || "Error", message, traceback, details)
    end
  end

  def from_python(body, _category),
    do: transport("the worker sent a malformed error: " <> excerpt(body))

  # What a ToolError adds to the body, as details.
  defp tool_error_fields(body) do
    details =
      case Map.get(body, "details") do
        map when is_map(map) and not is_struct(map) -> map
        _ -> %{}
      end

    details =
      case Map.get(body, "code") do
        nil -> details
        code when is_integer(code) -> Map.put(details, :code, code)
        code when is_binary(code) -> Map.put(details, :code, string_or_excerpt(code))
        code -> Map.put(details, :code, excerpt(code))
      end

    if Map.get(body, "retryable") == true,
      do: Map.put(details, :retryable, true),
      else: details
  end

  # A UTF-8 string field, or nil.
  defp string_field(body, key) do
    case Map.get(body, key) do
      value when is_binary(value) -> if String.valid?(value), do: value
      _ -> nil
    end
  end

  # A UTF-8 string field as is (a type name cut short), nil if absent, and
  # anything else (a map, a number, bytes that are not UTF-8) as its excerpt.
  defp shown_field(body, key) do
    case {key, Map.get(body, key)} do
      {_, nil} ->
        nil

      {"type", type} when is_binary(type) and byte_size(type) <= @excerpt_chars ->
        string_or_excerpt(type)

      {"message", message} when is_binary(message) ->
        string_or_excerpt(message)

      {_, value} ->
        excerpt(value)
    end
  end

  defp string_or_excerpt(value), do: if(String.valid?(value), do: value, else: excerpt(value))

  @doc """
  The error as text: what `to_string/1` gives (see "As text" above).
  """
  @impl true
  @spec message(t()) :: String.t()
  def message(%__MODULE__{} = error), do: format(error)

  @doc """
  The error as one line of text (then its Python traceback, if any): what
  `Exception.message/1` gives.

      iex> Snakepit.Error.format(Snakepit.Error.timeout("late"))
      "[timeout] late"
  """
  @spec format(t()) :: String.t()
  def format(%{category: category, message: message} = error) do
    IO.iodata_to_binary([
      "[#{category}] ",
      text(message),
      details_text(Map.get(error, :details)),
      traceback_text(Map.get(error, :python_traceback))
    ])
  end

  defp text(message) when is_binary(message), do: string_or_excerpt(message)
  defp text(other), do: excerpt(other)

  defp details_text(details) when details == %{} or details == nil or details == [], do: []

  defp details_text(details) do
    ["\nDetails: ", inspect(Redact.redact(details), limit: 50, printable_limit: 1_000)]
  end

  defp traceback_text(traceback) when is_binary(traceback) and traceback != "" do
    ["\n\nPython traceback:\n", traceback |> string_or_excerpt() |> String.trim_trailing()]
  end

  defp traceback_text(_none), do: []

  defimpl String.Chars do
    def to_string(error), do: Snakepit.Error.format(error)
  end

  defimpl Inspect do
    import Inspect.Algebra

    # The details stay: without them, ExUnit could not show how two errors
    # differ. The traceback, the long part, is left out.
    def inspect(%{category: category, message: message} = error, opts) do
      details =
        case Map.get(error, :details) do
          empty when empty in [nil, %{}, []] -> []
          details -> [", details: ", to_doc(Snakepit.Redact.redact(details), opts)]
        end

      concat(
        ["#Snakepit.Error<", to_doc(category, opts), ", ", to_doc(message, opts)] ++
          details ++ [">"]
      )
    end
  end
end
