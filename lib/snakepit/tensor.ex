defmodule Snakepit.Tensor do
  @moduledoc """
  An n-dimensional array crossing the pipe in one piece: numpy arrays
  returned by a tool arrive as this struct, and this struct in the
  arguments reaches the tool as a numpy array. No element is looked at on
  the way: the data is one binary.

  - `dtype`: the element type, in Nx's notation: `{:f, 16 | 32 | 64}`,
    `{:s, 8 | 16 | 32 | 64}`, `{:u, 8 | 16 | 32 | 64}`, `{:c, 64 | 128}`
    (complex: real then imaginary part, each half the bits), and
    `{:bool, 8}` for numpy's `bool` (one byte per element, 0 or 1).
  - `shape`: a tuple of dimensions; `{}` for a 0-d array (one element).
  - `data`: the elements, little-endian, in C (row-major) order: exactly
    `product(shape) * bits / 8` bytes.

  A tensor from a worker has `data` pointing into the frame it came in
  (no copy) when it is 4 KiB or more; `:binary.copy/1` it before keeping a
  small slice of a large answer for long. To Python it is copied once, into
  the frame.

  ## With Nx

  Nx is not a dependency. With Nx installed, a tensor converts in one line
  (`{:bool, 8}` has no Nx type: use `{:u, 8}` for it):

      Nx.from_binary(t.data, t.dtype) |> Nx.reshape(t.shape)

  and back with `from_nx/1`. Nx's binary backend stores elements in native
  byte order, which is little-endian on x86-64 and ARM.

  ## In Python

  The tool gets a read-only `numpy.ndarray` (a view over the received
  bytes; `.copy()` it to write). numpy arrays of any byte order and memory
  layout (strided views, transposes, big-endian) are sent in C order,
  little-endian; arrays of other dtypes (object, strings, records, dates,
  `float128`) are refused with an `unencodable_result` error. Python
  lists stay lists, and numpy scalars (`np.float32(1.5)`) are plain numbers.
  See "Values" in `docs/protocol.md` for the wire format.
  """

  @enforce_keys [:dtype, :shape, :data]
  defstruct [:dtype, :shape, :data]

  @typedoc "An element type, as Nx writes it (plus `{:bool, 8}`)."
  @type dtype ::
          {:f, 16 | 32 | 64}
          | {:s, 8 | 16 | 32 | 64}
          | {:u, 8 | 16 | 32 | 64}
          | {:c, 64 | 128}
          | {:bool, 8}

  @type t :: %__MODULE__{dtype: dtype(), shape: tuple(), data: binary()}

  @dtypes [
    {:f, 16},
    {:f, 32},
    {:f, 64},
    {:s, 8},
    {:s, 16},
    {:s, 32},
    {:s, 64},
    {:u, 8},
    {:u, 16},
    {:u, 32},
    {:u, 64},
    {:c, 64},
    {:c, 128},
    {:bool, 8}
  ]

  @doc """
  The dtypes a tensor can have.

      iex> {:f, 32} in Snakepit.Tensor.dtypes()
      true
  """
  @spec dtypes() :: [dtype()]
  def dtypes, do: @dtypes

  @doc """
  A tensor of `data` (little-endian, C order) with `dtype` and `shape`.
  Raises `ArgumentError` if the dtype is unknown, the shape is not a
  tuple of non-negative integers, or the data is not the size they need.

      iex> t = Snakepit.Tensor.new(<<1, 2, 3, 4, 5, 6>>, {:u, 8}, {2, 3})
      iex> {t.dtype, t.shape}
      {{:u, 8}, {2, 3}}

      iex> Snakepit.Tensor.new(<<1, 2, 3>>, {:f, 32}, {1})
      ** (ArgumentError) a tensor of dtype {:f, 32} and shape {1} needs 4 bytes of data, got 3
  """
  @spec new(binary(), dtype(), tuple()) :: t()
  def new(data, dtype, shape) do
    unless dtype in @dtypes do
      raise ArgumentError,
            "unknown tensor dtype #{inspect(dtype)}; one of #{inspect(@dtypes)} expected"
    end

    unless is_tuple(shape) and Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0)) do
      raise ArgumentError,
            "a tensor shape is a tuple of non-negative integers, got #{inspect(shape)}"
    end

    unless is_binary(data) do
      raise ArgumentError, "tensor data is a binary, got #{inspect(data, limit: 5)}"
    end

    need = nbytes(dtype, shape)

    if byte_size(data) != need do
      raise ArgumentError,
            "a tensor of dtype #{inspect(dtype)} and shape #{inspect(shape)} needs " <>
              "#{need} bytes of data, got #{byte_size(data)}"
    end

    %__MODULE__{dtype: dtype, shape: shape, data: data}
  end

  @doc """
  The number of bytes a tensor of `dtype` and `shape` holds.

      iex> Snakepit.Tensor.nbytes({:c, 64}, {2, 3})
      48
      iex> Snakepit.Tensor.nbytes({:f, 64}, {})
      8
  """
  @spec nbytes(dtype(), tuple()) :: non_neg_integer()
  def nbytes({_kind, bits}, shape) do
    shape |> Tuple.to_list() |> Enum.reduce(div(bits, 8), &(&1 * &2))
  end

  @doc """
  A tensor from an `Nx.Tensor` (needs Nx, which Snakepit does not depend
  on). Raises `ArgumentError` for Nx types the wire does not carry
  (`{:bf, 16}`, sub-byte integers, 8-bit floats).
  """
  @spec from_nx(struct()) :: t()
  def from_nx(%{__struct__: Nx.Tensor} = tensor) do
    nx = Nx
    new(apply(nx, :to_binary, [tensor]), apply(nx, :type, [tensor]), apply(nx, :shape, [tensor]))
  end
end
